"""kface clean: sub-centre assignment and flagging on a constructed case with known answers, then
the command on a tiny sub-center run (CSV, contact sheet, --apply, refusals)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers.training import make_workspace
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.defaults import CLEAN_MARGIN_DEG
from kface_cli.errors import InputError
from kface_cli.research.clean import angle_histogram, assign_subcenters, clean_run, flag_images
from kface_cli.train.config import TrainConfig
from kface_cli.train.loop import train


def _basis(i: int, d: int = 9) -> np.ndarray:
    v = np.zeros(d, np.float32)
    v[i] = 1.0
    return v


def _between(i: int, j: int, degrees: float) -> np.ndarray:
    """The unit vector at ``degrees`` from basis i towards basis j."""
    t = math.radians(degrees)
    return math.cos(t) * _basis(i) + math.sin(t) * _basis(j)


# 3 classes x K=3 sub-centres on the 9 axes: class c owns axes 3c, 3c+1, 3c+2.
CENTRES = np.stack([np.stack([_basis(3 * c + k) for k in range(3)]) for c in range(3)])
CASE = [  # (embedding, label): known sub-centre, angle to the dominant one, nearest class
    (_basis(0), 0),  # 0: class 0, on sub-centre 0
    (_basis(0) * 5.0, 0),  # 1: length does not matter
    (_between(0, 1, 20), 0),  # 2: 20 degrees from sub-centre 0, still nearest it
    (_between(0, 2, 60), 0),  # 3: 60 degrees from sub-centre 0, nearer sub-centre 2 (30 degrees)
    (_basis(1), 0),  # 4: on class 0's sub-centre 1: 90 degrees from the dominant
    (_basis(4), 0),  # 5: labelled 0, but on class 1's sub-centre 1 (a wrong label)
    (_basis(4), 1),  # 6-8: class 1 lives on its sub-centre 1
    (_between(4, 3, 10), 1),
    (_basis(4), 1),
    (_basis(6), 2),  # 9-13: class 2 splits 2/2/1 over its sub-centres: a minority identity
    (_basis(6), 2),
    (_basis(7), 2),
    (_basis(7), 2),
    (_basis(8), 2),
]


def test_assignment_on_a_constructed_case_has_the_known_answers():
    x = np.stack([e for e, _ in CASE])
    labels = np.array([c for _, c in CASE])
    a = assign_subcenters(x, labels, CENTRES * 3.0)  # centre length does not matter either
    assert a.subcenter.tolist() == [0, 0, 0, 2, 1, 0, 1, 1, 1, 0, 0, 1, 1, 2]
    assert a.counts.tolist() == [[4, 1, 1], [0, 3, 0], [2, 2, 1]]
    assert a.dominant.tolist() == [0, 1, 0]  # class 2: a 2-2 tie goes to the lower index
    np.testing.assert_allclose(a.angle, [0, 0, 20, 60, 90, 90, 0, 10, 0, 0, 0, 90, 90, 90], atol=1e-3)
    # the other class with the nearest dominant sub-centre (ties: the lower index)
    assert a.nearest_class.tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(a.nearest_angle, [90] * 5 + [0] + [90] * 8, atol=1e-3)
    np.testing.assert_allclose(a.margin, [-90, -90, -70, -30, 0, 90, -90, -80, -90, -90, -90, 0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(a.dominant_share(), [4 / 6, 1.0, 0.4])


def test_flagging_follows_the_rule_and_threshold():
    x = np.stack([e for e, _ in CASE])
    labels = np.array([c for _, c in CASE])
    a = assign_subcenters(x, labels, CENTRES)
    assert np.flatnonzero(flag_images(a, 77.0, "angle")).tolist() == [4, 5, 11, 12, 13]
    assert np.flatnonzero(flag_images(a, 45.0, "angle")).tolist() == [3, 4, 5, 11, 12, 13]
    assert np.flatnonzero(flag_images(a, 12.0, "margin")).tolist() == [5]
    assert np.flatnonzero(flag_images(a, 12.0)).tolist() == [5]  # margin is the default
    with pytest.raises(InputError, match="unknown rule"):
        flag_images(a, 12.0, "distance")
    hist = angle_histogram(a.angle, 30)
    assert [(h["from"], h["to"], h["images"]) for h in hist] == [(0, 30, 8), (30, 60, 0), (60, 90, 6)]
    assert sum(h["images"] for h in hist) == len(CASE)


def test_margin_flags_a_face_near_another_identity_and_spares_faces_near_nobody():
    """Image 14 is labelled 0 but sits 35 degrees from class 1's dominant sub-centre and 55 from
    its own: the margin rule flags it, the angle rule does not. Images 4, 11-13 are 90 degrees
    from every dominant sub-centre (a hard face is near none): the angle rule flags them, the
    margin rule does not. Image 15 is 40 degrees from its own, 50 from class 1's: kept by both."""
    case = CASE + [(_between(0, 4, 55), 0), (_between(0, 4, 40), 0)]
    x = np.stack([e for e, _ in case])
    labels = np.array([c for _, c in case])
    a = assign_subcenters(x, labels, CENTRES)
    assert a.dominant.tolist() == [0, 1, 0]
    np.testing.assert_allclose(a.margin[14:], [55 - 35, 40 - 50], atol=1e-3)
    assert a.nearest_class[14:].tolist() == [1, 1]
    assert np.flatnonzero(flag_images(a, 12.0, "margin")).tolist() == [5, 14]
    assert np.flatnonzero(flag_images(a, 77.0, "angle")).tolist() == [4, 5, 11, 12, 13]


# ------------------------------------------------------------------------------------------
# The command on a real (tiny) sub-center run
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subcenter_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("clean"), train_ids=4, val_ids=2, per_id=5)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = dict(workdir=str(ws), network="mbf_small", embedding_size=32, batch_size=5, epochs=1, workers=0)
        common.update(scale=16.0, lr=0.05, val_pairs="none")
        train(TrainConfig(name="sub", loss="subcenter", **common).validate())
        train(TrainConfig(name="arc", loss="arcface", **common).validate())
    finally:
        torch.set_num_threads(n)
    return ws


@pytest.mark.slow
def test_clean_command_flags_writes_csv_sheet_and_a_cleaned_copy(subcenter_run, tmp_path, monkeypatch):
    monkeypatch.setenv("KFACE_NO_PROGRESS", "1")
    ws = subcenter_run
    probe = clean_run("sub", workdir=ws, report=tmp_path / "probe", sheet_max=0)
    assert probe.subcenters == 3 and probe.images == 20 and probe.contact_sheet is None
    assert probe.rule == "margin" and probe.threshold == CLEAN_MARGIN_DEG
    rows = list(csv.DictReader(open(probe.csv)))
    assert {f.path for f in probe.flagged} == {r["path"] for r in rows if float(r["margin"]) > CLEAN_MARGIN_DEG}
    threshold = float(np.percentile([r for r in _angles(probe.csv)], 70))  # about 6 of the 20 above it
    out = tmp_path / "cleaned"
    r = CliRunner().invoke(
        app,
        [
            "clean",
            "sub",
            "-w",
            str(ws),
            "--rule",
            "angle",
            "--threshold",
            f"{threshold}",
            "--apply",
            str(out),
            "--report",
            str(tmp_path / "rep"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = list(csv.DictReader(open(tmp_path / "rep" / "clean.csv")))
    above = {row["path"] for row in rows if float(row["angle"]) > threshold}
    assert {f["path"] for f in doc["flagged"]} == above and 0 < len(above) < 20
    assert {row["path"] for row in rows if row["flagged"] == "1"} == above
    assert set(doc["flagged"][0]) >= {"path", "identity", "angle", "margin", "nearest_identity"}
    assert doc["rule"] == "angle" and doc["threshold"] == pytest.approx(threshold) and len(doc["identities"]) == 4
    assert (tmp_path / "rep" / "contact_sheet.png").stat().st_size > 0
    kept = sorted(p.name for p in out.rglob("*.png"))
    assert len(kept) == 20 - len(above) == doc["applied"]["kept"]
    assert not {p.rsplit("/", 1)[-1] for p in above} & set(kept)
    originals = sorted(ws.glob("split/train/*/*.png"))
    assert len(originals) == 20  # originals untouched
    linked = next(out.rglob("*.png"))
    assert linked.stat().st_ino == (ws / "split" / "train" / linked.parent.name / linked.name).stat().st_ino


def _angles(path):
    return [float(row["angle"]) for row in csv.DictReader(open(path))]


@pytest.mark.slow
def test_clean_refuses_runs_without_subcenters_existing_outputs_and_bad_thresholds(
    subcenter_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("KFACE_NO_PROGRESS", "1")
    ws = subcenter_run
    r = CliRunner().invoke(app, ["clean", "arc", "-w", str(ws)])
    assert r.exit_code == 2 and "clean needs sub-centres" in r.output and "Traceback" not in r.output
    taken = tmp_path / "taken"
    (taken / "x").mkdir(parents=True)
    with pytest.raises(InputError, match="already exists"):
        clean_run("sub", workdir=ws, apply_to=taken, report=tmp_path / "r")
    with pytest.raises(InputError, match="inside the training folder"):
        clean_run("sub", workdir=ws, apply_to=ws / "split" / "train" / "cleaned", report=tmp_path / "r")
    r = CliRunner().invoke(app, ["clean", "sub", "-w", str(ws), "--threshold", "200"])
    assert r.exit_code == 2 and "between 0 and 180" in r.output
    other = make_workspace(tmp_path / "other", train_ids=3, val_ids=2, per_id=3, seed=1)
    r = CliRunner().invoke(app, ["clean", "sub", "-w", str(ws), "--data", str(other / "split" / "train")])
    assert r.exit_code == 2 and "has 3 identities, the run was trained on 4" in r.output
