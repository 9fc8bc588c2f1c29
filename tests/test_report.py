"""Report folder (JSON + PNG plots) and table rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kface_cli.embedding import metrics as M
from kface_cli.evaluate import report
from kface_cli.evaluate.conditions import verification_breakdown
from kface_cli.evaluate.evaluation import Evaluation
from kface_cli.evaluate.report import condition_table, summary_rows, summary_title, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluation(with_identification: bool) -> Evaluation:
    rng = np.random.default_rng(0)
    issame = rng.random(400) < 0.5
    dist = np.where(issame, rng.normal(0.9, 0.3, 400), rng.normal(1.7, 0.3, 400)).clip(0, 4)
    summary = M.verification_metrics(dist, issame)
    codes = [{"light": "L1" if i % 2 else "L7", "cam": "C7"} for i in range(400)]
    summary["per_condition"] = verification_breakdown(dist, issame, codes, codes, threshold=summary["threshold"])
    summary["model"] = {"network": "r50", "flip": True}
    summary["protocol"] = "val"
    summary["calibration"] = {
        "verification": {
            "target_far": 0.01,
            "threshold": summary["tar_at_far"]["1e-02"]["threshold"],
            "tar": summary["tar_at_far"]["1e-02"]["tar"],
            "achieved_far": summary["tar_at_far"]["1e-02"]["achieved_far"],
            "flip": False,
        }
    }
    if with_identification:
        summary.update(
            rank1=0.8,
            rank5=0.95,
            cmc=[0.8, 0.9, 0.95],
            n_probes=20,
            n_known=20,
            n_unknown=0,
            n_identities=3,
            dir_at_fpir={"1e-01": {"fpir": 0.1, "dir": None, "reason": "needs at least 10 unknown probes"}},
        )
    return Evaluation(summary=summary, dist=dist, issame=issame)


@pytest.mark.slow
def test_write_report_files(tmp_path):
    folder = write_report(_evaluation(True), tmp_path / "reports" / "r1")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cmc.png", "conditions.png", "distances.png", "metrics.json", "roc.png"]
    for png in ("cmc.png", "conditions.png", "distances.png", "roc.png"):
        data = (folder / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["plots"] == ["roc.png", "distances.png", "cmc.png", "conditions.png"]
    assert saved["accuracy"] == _evaluation(True).summary["accuracy"]
    assert saved["per_condition"]["light"]["L7"]["n_pairs"] == 200


def test_no_cmc_without_identification_and_no_roc_without_pairs(tmp_path):
    folder = write_report(_evaluation(False), tmp_path / "a")
    assert not (folder / "cmc.png").exists() and (folder / "roc.png").exists()
    ident_only = Evaluation(summary={"rank1": 1.0, "cmc": [1.0], "per_condition": None})
    folder = write_report(ident_only, tmp_path / "b")
    assert sorted(p.name for p in folder.iterdir()) == ["cmc.png", "metrics.json"]


def test_summary_and_condition_rows():
    ev = _evaluation(True)
    rows = {r[0]: r for r in summary_rows(ev.summary)}
    assert rows["accuracy (10-fold)"][1].endswith("%") and "+-" in rows["accuracy (10-fold)"][1]
    assert rows["TAR @ FAR 1e-03"][1] == "-" and "1000 different pairs" in rows["TAR @ FAR 1e-03"][2]
    assert rows["TAR @ FAR 1e-01"][1].endswith("%")
    assert rows["DIR @ FPIR 1e-01"][1] == "-"
    assert rows["threshold 1:1 at FAR 1e-02"][1] == f"{ev.summary['calibration']['verification']['threshold']:.4f}"
    assert rows["threshold 1:1 at FAR 1e-02"][2].endswith("(no flip, as identify); not saved (add --save-threshold)")
    assert summary_title(ev.summary) == "Evaluation: r50 (val, flip on)"
    title, columns, crow = condition_table(ev.summary["per_condition"])
    assert (
        columns == ["condition", "description", "pairs", "acc@thr", "10-fold", "AUC", "EER"] and "either image" in title
    )
    assert [r[0] for r in crow] == ["light L1", "light L7", "camera C7"]
    assert crow[1][1] == "0 lux, all lamps (dark)" and crow[1][2] == 200
    per_probe = {"light": {"L7": {"n_probes": 4, "rank1": 0.5, "rank5": 1.0, "description": "dark"}}}
    title, columns, crow = condition_table(per_probe)
    assert columns == ["condition", "description", "probes", "rank-1", "rank-5"] and crow == [
        ["light L7", "dark", 4, "50.00%", "100.00%"]
    ]


def _figure_texts(monkeypatch, draw) -> list[str]:
    """Every text a plot puts on its figure (titles, labels, tick labels, annotations, legends)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    draw()
    (fig,) = figures
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_conditions_plot_reads_at_a_glance(monkeypatch, tmp_path):
    """Descriptions instead of bare codes, each bar's value and pair count, an axis zoomed to the data."""
    ev = _evaluation(False)
    per_condition = ev.summary["per_condition"]
    texts = _figure_texts(
        monkeypatch,
        lambda: report.plot_conditions(per_condition, tmp_path / "c.png", overall=ev.summary["best_accuracy"]),
    )
    l7 = per_condition["light"]["L7"]
    assert "L7  0 lux, all lamps (dark)" in texts and "C7  frontal" in texts
    assert f"{100 * l7['accuracy_at_threshold']:.1f}%  (200 pairs)" in texts
    assert any(
        t.startswith("accuracy at the overall best threshold (axis from 90%). dashed line: all pairs") for t in texts
    )
    assert not any(t.startswith("accuracy at the overall best threshold (axis from 0%") for t in texts)


def test_zoomed_floor_shows_small_differences():
    assert report._zoomed_floor([0.92, 0.94]) == 0.9  # 0.92 and 0.94 no longer look the same
    assert report._zoomed_floor([0.3, 0.99]) == 0.2
    assert report._zoomed_floor([0.01]) == 0.0 and report._zoomed_floor([1.0]) == 0.95


def test_roc_marks_the_eer_and_cmc_zooms(monkeypatch, tmp_path):
    ev = _evaluation(False)
    texts = _figure_texts(monkeypatch, lambda: report.plot_roc(ev.dist, ev.issame, ev.summary, tmp_path / "r.png"))
    assert f"EER {100 * ev.summary['eer']:.2f}% (threshold {ev.summary['eer_threshold']:.3f})" in texts
    texts = _figure_texts(monkeypatch, lambda: report.plot_cmc([0.95, 0.97, 1.0], tmp_path / "c.png"))
    assert "CMC (closed set); y axis from 0.90" in texts and "rank-1 95.0%" in texts
