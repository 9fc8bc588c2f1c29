"""Threshold calibration files: where they live, fingerprint keys, 1:1 and 1:N kinds, refusals, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kface_cli.embedding.calibration import (
    IDENTIFICATION,
    VERIFICATION,
    calibration_path,
    check,
    identify_threshold,
    load_calibration,
    load_threshold,
    save_calibration,
    weaker_than_saved,
    without_flip,
)
from kface_cli.errors import InputError, KFaceError

GOOD_1TO1 = {"threshold": 0.9, "target_far": 1e-3, "tar": 0.8, "n_same": 4000, "n_diff": 4000}
GOOD_1N = {"threshold": 0.6, "target_fpir": 1e-2, "dir": 0.7, "n_known": 200, "n_unknown": 100}


class Emb:
    def __init__(self, source, fingerprint="abc", flip=False):
        self.source = None if source is None else Path(source)
        self.fingerprint = fingerprint
        self.flip = flip
        self.network = "r50"
        self.weights_digest = "d" * 40


def _model(tmp_path, name="m.onnx"):
    model = tmp_path / name
    model.write_bytes(b"x")
    return model


def test_run_folder_and_files_inside_it_share_calibration_json(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "backbone.pth").write_bytes(b"")
    assert calibration_path(run) == run / "calibration.json"
    assert calibration_path(run / "backbone.pth") == run / "calibration.json"
    path = save_calibration(Emb(run), VERIFICATION, GOOD_1TO1)
    assert path == run / "calibration.json"
    assert load_threshold(Emb(run / "backbone.pth")) == 0.9
    entry = load_calibration(Emb(run))
    assert entry["target_far"] == 1e-3 and entry["tar"] == 0.8 and entry["flip"] is False
    assert entry["kind"] == VERIFICATION and entry["path"] == str(path)


def test_bare_model_file_gets_a_sidecar_and_fingerprints_are_separate(tmp_path):
    model = _model(tmp_path, "w600k_r50.onnx")
    assert calibration_path(model) == tmp_path / "w600k_r50.onnx.calibration.json"
    save_calibration(Emb(model, "aaa"), VERIFICATION, dict(GOOD_1TO1, threshold=1.1))
    save_calibration(Emb(model, "bbb"), VERIFICATION, dict(GOOD_1TO1, threshold=1.2, target_far=None))
    assert load_threshold(Emb(model, "aaa")) == 1.1
    assert load_threshold(Emb(model, "bbb")) == 1.2
    assert load_threshold(Emb(model, "ccc")) is None
    data = json.loads((tmp_path / "w600k_r50.onnx.calibration.json").read_text())
    assert data["version"] == 2 and set(data["entries"]) == {"aaa", "bbb"}
    assert data["entries"]["bbb"][VERIFICATION]["target_far"] is None


def test_identify_prefers_the_1n_threshold_and_says_which_it_uses(tmp_path):
    emb = Emb(_model(tmp_path))
    assert identify_threshold(emb) is None
    save_calibration(emb, VERIFICATION, GOOD_1TO1)
    assert identify_threshold(emb) == (0.9, VERIFICATION, "calibrated 1:1 at FAR 1e-03; no 1:N calibration")
    save_calibration(emb, IDENTIFICATION, GOOD_1N)
    assert identify_threshold(emb) == (0.6, IDENTIFICATION, "calibrated 1:N at FPIR 1e-02")
    assert load_threshold(emb) == 0.9 and load_threshold(emb, IDENTIFICATION) == 0.6  # both kept
    save_calibration(emb, VERIFICATION, dict(GOOD_1TO1, target_far=None))
    assert load_calibration(emb)["target_far"] is None and load_threshold(emb, IDENTIFICATION) == 0.6


def test_version_1_files_are_read_as_1to1_calibrations(tmp_path):
    model = _model(tmp_path)
    v1 = {"version": 1, "entries": {"abc": {"threshold": 0.45, "target_far": 0.01, "n_pairs": 8120}}}
    calibration_path(model).write_text(json.dumps(v1))
    assert identify_threshold(Emb(model)) == (0.45, VERIFICATION, "calibrated 1:1 at FAR 1e-02; no 1:N calibration")
    save_calibration(Emb(model), IDENTIFICATION, GOOD_1N)  # upgrades the file, keeps the 1:1 entry
    data = json.loads(calibration_path(model).read_text())
    assert data["version"] == 2 and set(data["entries"]["abc"]) == {VERIFICATION, IDENTIFICATION}
    assert load_threshold(Emb(model)) == 0.45


@pytest.mark.parametrize(
    "kind,entry,match",
    [
        (VERIFICATION, dict(GOOD_1TO1, n_same=0, threshold=0.0), "without same-person pairs"),
        (VERIFICATION, dict(GOOD_1TO1, n_diff=0), "without different-person pairs"),
        (IDENTIFICATION, dict(GOOD_1N, n_unknown=0), "without not-enrolled probes"),
        (IDENTIFICATION, dict(GOOD_1N, n_known=0), "without enrolled-person probes"),
        (VERIFICATION, dict(GOOD_1TO1, threshold=0.0), "outside the squared-L2 range"),
        (VERIFICATION, dict(GOOD_1TO1, threshold=5.0), "outside the squared-L2 range"),
        (VERIFICATION, dict(GOOD_1TO1, threshold=float("nan")), "outside the squared-L2 range"),
    ],
)
def test_degenerate_calibrations_are_refused_and_nothing_is_written(tmp_path, kind, entry, match):
    emb = Emb(_model(tmp_path))
    with pytest.raises(KFaceError, match=match):
        check(kind, entry)
    with pytest.raises(KFaceError, match=match):
        save_calibration(emb, kind, entry)
    assert not calibration_path(emb.source).exists()


def test_a_weaker_calibration_is_detected_a_stronger_one_is_not(tmp_path):
    emb = Emb(_model(tmp_path))
    assert weaker_than_saved(emb, VERIFICATION, GOOD_1TO1) is None  # nothing saved yet
    save_calibration(emb, VERIFICATION, GOOD_1TO1)
    reason = weaker_than_saved(emb, VERIFICATION, dict(GOOD_1TO1, n_same=60, n_diff=60))
    assert "from 4000 same-person pairs and 4000 different-person pairs; this one rests on 60 and 60" in reason
    assert weaker_than_saved(emb, VERIFICATION, dict(GOOD_1TO1, n_diff=3999)) is not None
    assert weaker_than_saved(emb, VERIFICATION, dict(GOOD_1TO1, n_diff=5000)) is None
    assert weaker_than_saved(emb, IDENTIFICATION, dict(GOOD_1N, n_unknown=1)) is None  # other kind: none saved


def test_without_flip_shares_the_model_and_takes_identifys_fingerprint(tmp_path):
    from kface_cli.embedding.embedder import make_fingerprint

    plain = Emb(None)
    assert without_flip(plain) is plain
    flipped = Emb(None, fingerprint=make_fingerprint("d" * 40, True), flip=True)
    twin = without_flip(flipped)
    assert twin is not flipped and twin.flip is False and flipped.flip is True
    assert twin.fingerprint == make_fingerprint("d" * 40, False) != flipped.fingerprint


def test_errors(tmp_path):
    assert load_threshold(Emb(None)) is None
    with pytest.raises(KFaceError, match="no file or run folder"):
        save_calibration(Emb(None), VERIFICATION, GOOD_1TO1)
    model = _model(tmp_path)
    (tmp_path / "m.onnx.calibration.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read calibration"):
        load_threshold(Emb(model))
    (tmp_path / "m.onnx.calibration.json").write_text("[]")
    with pytest.raises(InputError, match="not a kface calibration"):
        load_threshold(Emb(model))


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ({"abc": {"verification": dict(GOOD_1TO1, threshold=1e9)}}, "threshold 1000000000.0 is outside"),
        ({"abc": {"verification": dict(GOOD_1TO1, threshold=float("nan"))}}, "threshold nan is outside"),
        ({"abc": {"verification": dict(GOOD_1TO1, threshold=-0.5)}}, "threshold -0.5 is outside"),
        ({"abc": {"verification": {"n_same": 3}}}, "threshold is missing"),
        ({"abc": {"verification": dict(GOOD_1TO1, threshold="0.9")}}, "threshold is '0.9'"),
        ({"abc": {"verification": dict(GOOD_1TO1, threshold=True)}}, "threshold is True"),
        ({"abc": {"identification": dict(GOOD_1N, n_known=-3)}}, "n_known is -3"),
        ({"abc": {"verification": [0.9]}}, "verification is not an object"),
        ({"abc": {"mystery": GOOD_1TO1}}, "unknown kind 'mystery'"),
        ({"other": {"verification": dict(GOOD_1TO1, threshold=99)}}, "entry 'other'"),  # any entry
        ({"abc": 0.5}, "entry 'abc' is not an object"),
    ],
)
def test_damaged_calibration_files_are_one_line_naming_the_file(tmp_path, entries, words):
    model = _model(tmp_path)
    path = calibration_path(model)
    path.write_text(json.dumps({"version": 2, "entries": entries}))  # json writes NaN as NaN
    with pytest.raises(InputError, match=re.escape(words)) as err:
        identify_threshold(Emb(model))
    assert str(path) in str(err.value)


def test_deep_and_huge_calibration_files_are_one_line(tmp_path):
    model = _model(tmp_path)
    path = calibration_path(model)
    path.write_text('{"entries": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match="cannot read calibration file"):
        load_threshold(Emb(model))
    path.write_text(json.dumps({"version": 2, "entries": {}, "pad": "x" * (2 << 20)}))
    with pytest.raises(InputError, match="bytes: not one kface wrote"):
        load_threshold(Emb(model))
