"""Where training data came from: traced at train time, carried by exports, warned about when used."""

from __future__ import annotations

import json
from pathlib import Path

from kface_cli.dataset.provenance import (
    META_TRAINING_DATA,
    TRAINING_DATA_KEY,
    is_synthetic_source,
    mark_synthetic,
    model_training_data,
    run_training_data,
    synthetic_warning,
    training_data,
    warn_if_synthetic,
)
from kface_cli.prepare.extract import DONE_MARKER
from kface_cli.workspace import RUN_CONFIG


def _workspace(root: Path, sources: dict[str, Path]) -> Path:
    """A workspace whose raw/ says identity -> source zip, and a split/train folder of those identities."""
    for ident, src in sources.items():
        marker = root / "raw" / "Low" / ident / DONE_MARKER
        marker.parent.mkdir(parents=True)
        marker.write_text(json.dumps({"key": {"source": str(src)}, "files": {}}))
        (root / "split" / "train" / ident).mkdir(parents=True)
    return root / "split" / "train"


def test_synthetic_sources_are_traced(tmp_path):
    synth = tmp_path / "sample" / "Low_Resolution"
    synth.mkdir(parents=True)
    mark_synthetic(tmp_path / "sample", seed=0)
    assert is_synthetic_source(synth / "19072641.zip") and not is_synthetic_source(tmp_path / "kface" / "x.zip")
    data = _workspace(tmp_path / "ws", {"19072641": synth / "19072641.zip", "19072642": synth / "19072642.zip"})
    record = training_data(data, ["19072641", "19072642"])
    assert record["synthetic"] is True and record["synthetic_only"] is True and record["traced_identities"] == 2
    assert record["sources"] == [str(tmp_path / "sample")]
    assert training_data(data, ["19072641"], init="backbone.pth")["synthetic_only"] is False  # pretrained: real faces


def test_real_mixed_and_untraced_data(tmp_path):
    synth = tmp_path / "sample" / "Low_Resolution"
    synth.mkdir(parents=True)
    mark_synthetic(tmp_path / "sample")
    real = tmp_path / "kface" / "Low_Resolution" / "19062421.zip"
    data = _workspace(tmp_path / "ws", {"19062421": real, "19072641": synth / "19072641.zip"})
    mixed = training_data(data, ["19062421", "19072641"])
    assert mixed["synthetic"] is False and mixed["synthetic_only"] is False
    untraced = training_data(tmp_path / "elsewhere", ["a", "b"])
    assert untraced["synthetic"] is None and untraced["traced_identities"] == 0
    assert training_data("synthetic:10x4", ["0"])["synthetic_only"] is True


class _Model:
    def __init__(self, source=None, metadata=None):
        self.source, self.metadata = source, metadata or {}


def test_model_side_warning(tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    record = {"synthetic": True, "synthetic_only": True}
    (run / RUN_CONFIG).write_text(json.dumps({"network": "mbf", TRAINING_DATA_KEY: record}))
    for source in (run, run / "backbone.pth"):
        assert model_training_data(_Model(source)) == record
    exported = _Model(tmp_path / "demo.onnx", {META_TRAINING_DATA: json.dumps(record)})
    assert "synthetic sample data" in synthetic_warning(exported)
    assert warn_if_synthetic(exported) == [synthetic_warning(exported)] and "synthetic" in capsys.readouterr().err
    (run / RUN_CONFIG).write_text(json.dumps({"network": "mbf"}))  # a run from before the record: no warning
    assert synthetic_warning(_Model(run)) is None and warn_if_synthetic(_Model(None)) == []


def test_deeply_nested_records_are_no_record(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    assert model_training_data(_Model(tmp_path / "m.onnx", {META_TRAINING_DATA: deep})) is None
    (tmp_path / RUN_CONFIG).write_text(deep)
    assert run_training_data(tmp_path) is None


def test_title_note_names_a_synthetic_model():
    from kface_cli.dataset.provenance import SYNTHETIC_TITLE_NOTE, title_note

    exported = _Model(None, {META_TRAINING_DATA: json.dumps({"synthetic": True, "synthetic_only": True})})
    assert SYNTHETIC_TITLE_NOTE in title_note([synthetic_warning(exported)])
    assert title_note([]) == "" and title_note(["something else"]) == ""
