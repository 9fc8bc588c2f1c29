"""The workspace layout: where each stage reads and writes, resolution names, the latest run."""

from __future__ import annotations

import os

import pytest

from kface_cli.errors import InputError
from kface_cli.workspace import RUN_BACKBONE, Workspace, normalise_resolution


@pytest.mark.parametrize("spelling", ["middle", "Middle", "MIDDLE", " Middle_Resolution ", "middle_resolution"])
def test_resolution_spellings(spelling):
    assert normalise_resolution(spelling) == "Middle"


def test_unknown_resolution_lists_the_valid_ones():
    with pytest.raises(InputError, match="High, Middle, Low"):
        normalise_resolution("Ultra")


def test_workdir_option_then_environment_then_current_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KFACE_WORKDIR", str(tmp_path / "env"))
    assert Workspace.resolve(tmp_path / "opt").root == tmp_path / "opt"
    assert Workspace.resolve().root == tmp_path / "env"
    monkeypatch.delenv("KFACE_WORKDIR")
    monkeypatch.chdir(tmp_path)
    assert Workspace.resolve().root == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Workspace.resolve("~/ws").root == tmp_path / "home" / "ws"


def test_stage_paths(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.raw("low") == tmp_path / "raw" / "Low"
    assert ws.manifest("Middle_Resolution") == tmp_path / "faces" / "Middle" / "manifest.csv"
    assert (ws.train_dir, ws.val_dir) == (tmp_path / "split" / "train", tmp_path / "split" / "val")
    assert (ws.classes_csv.name, ws.val_pairs.name) == ("classes.csv", "val_pairs.csv")
    assert ws.run("demo") == tmp_path / "runs" / "demo"
    assert ws.gallery == tmp_path / "gallery.h5" and ws.reports == tmp_path / "reports"


def test_latest_run_is_the_newest_with_a_backbone(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.latest_run() is None  # no runs folder
    for name, mtime in (("old", 1_000), ("new", 2_000)):
        (ws.run(name)).mkdir(parents=True)
        (ws.run(name) / RUN_BACKBONE).write_bytes(b"")
        os.utime(ws.run(name) / RUN_BACKBONE, (mtime, mtime))
    (ws.run("unfinished")).mkdir()  # newer folder, but no backbone yet
    assert ws.latest_run() == ws.run("new")


def test_require_names_the_stage_that_makes_the_file(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(InputError, match=r"Run `kface split` first"):
        ws.require(ws.val_pairs, "validation pairs", "kface split")
    ws.split.mkdir()
    ws.val_pairs.write_text("")
    assert ws.require(ws.val_pairs, "validation pairs", "kface split") == ws.val_pairs
