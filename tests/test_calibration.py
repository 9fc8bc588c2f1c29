"""Threshold calibration files: where they live, fingerprint keys, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kface_cli.embedding.calibration import calibration_path, load_calibration, load_threshold, save_threshold
from kface_cli.errors import InputError, KFaceError


class Emb:
    def __init__(self, source, fingerprint="abc", flip=False):
        self.source = None if source is None else Path(source)
        self.fingerprint = fingerprint
        self.flip = flip
        self.network = "r50"


def test_run_folder_and_files_inside_it_share_calibration_json(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "backbone.pth").write_bytes(b"")
    assert calibration_path(run) == run / "calibration.json"
    assert calibration_path(run / "backbone.pth") == run / "calibration.json"
    path = save_threshold(Emb(run), 0.9, 1e-3, tar=0.8)
    assert path == run / "calibration.json"
    assert load_threshold(Emb(run / "backbone.pth")) == 0.9
    entry = load_calibration(Emb(run))
    assert entry["target_far"] == 1e-3 and entry["tar"] == 0.8 and entry["flip"] is False


def test_bare_model_file_gets_a_sidecar_and_fingerprints_are_separate(tmp_path):
    model = tmp_path / "w600k_r50.onnx"
    model.write_bytes(b"x")
    assert calibration_path(model) == tmp_path / "w600k_r50.onnx.calibration.json"
    save_threshold(Emb(model, "aaa"), 1.1, 1e-2)
    save_threshold(Emb(model, "bbb", flip=True), 1.2, None)
    assert load_threshold(Emb(model, "aaa")) == 1.1
    assert load_threshold(Emb(model, "bbb")) == 1.2
    assert load_threshold(Emb(model, "ccc")) is None
    data = json.loads((tmp_path / "w600k_r50.onnx.calibration.json").read_text())
    assert set(data["entries"]) == {"aaa", "bbb"} and data["entries"]["bbb"]["target_far"] is None


def test_errors(tmp_path):
    assert load_threshold(Emb(None)) is None
    with pytest.raises(KFaceError, match="no file or run folder"):
        save_threshold(Emb(None), 1.0, 1e-3)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(KFaceError, match="outside"):
        save_threshold(Emb(model), 5.0, 1e-3)
    (tmp_path / "m.onnx.calibration.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read calibration"):
        load_threshold(Emb(model))
    (tmp_path / "m.onnx.calibration.json").write_text("[]")
    with pytest.raises(InputError, match="not a kface calibration"):
        load_threshold(Emb(model))
