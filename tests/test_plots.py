"""``plots.png`` of a training run: three panels, the best epoch marked."""

from __future__ import annotations

import json

import pytest

from kface_cli.train.plots import best_epoch, write_plots
from kface_cli.workspace import RUN_LOG, RUN_PLOTS


def _epoch(epoch: int, accuracy: float | None, best: bool) -> dict:
    val = None if accuracy is None else {"accuracy": accuracy, "tar": accuracy / 2, "far": 1e-2}
    return {"type": "epoch", "epoch": epoch, "loss": 10.0 / epoch, "val": val, "best": best}


def test_best_epoch_is_the_last_validated_improvement():
    epochs = [_epoch(1, 0.7, True), _epoch(2, 0.9, True), _epoch(3, 0.8, False)]
    assert best_epoch(epochs)["epoch"] == 2
    assert best_epoch(epochs + [_epoch(4, 0.95, True)])["epoch"] == 4
    assert best_epoch([_epoch(1, None, True)]) is None  # no validation pairs: nothing to mark
    assert best_epoch([]) is None


@pytest.fixture
def captured_figures(monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    return figures


def test_plots_png_marks_the_best_epoch(tmp_path, captured_figures):
    steps = [{"type": "step", "epoch": 1 + s // 10, "step": s, "loss": 10 - s / 5, "lr": 0.1} for s in range(30)]
    epochs = [_epoch(1, 0.7, True), _epoch(2, 0.9, True), _epoch(3, 0.85, False)]
    (tmp_path / RUN_LOG).write_text("".join(json.dumps(r) + "\n" for r in steps + epochs))
    path = write_plots(tmp_path)
    assert path == tmp_path / RUN_PLOTS and path.read_bytes()[:4] == b"\x89PNG"
    (fig,) = captured_figures
    legend = fig.axes[2].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["10-fold accuracy", "TAR @ FAR 1e-2", "best: epoch 2, 90.00%"]
