"""The data-stage commands through the CLI: sample-data -> extract -> crop -> split, errors, --json."""

import json

from helpers.synth import make_source
from typer.testing import CliRunner

from kface_cli.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["--quiet", *[str(a) for a in args]])


def test_sample_data_command(tmp_path):
    r = _run("sample-data", "-n", "1", "--res", "Low", "--grid", "tutorial", "-j", "1", "--json", "-w", tmp_path)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["identities"] == 1 and result["images"] == 24
    assert len(list((tmp_path / "source" / "Low_Resolution").glob("*.zip"))) == 1  # the workspace's default source


def test_pipeline_chains_through_the_workspace(tmp_path):
    source = make_source(tmp_path / "kface", n_ids=4)
    ws = tmp_path / "ws"
    r = _run("extract", source, "--res", "Low", "--lux", "L1,L3,L7", "--angle", "C1,C6-C9", "-w", ws)
    assert r.exit_code == 0, r.output
    assert "Extracted Low" in r.stdout and "Missing images per code" in r.stdout
    r = _run("extract", source, "--res", "Low", "--lux", "L1,L3,L7", "--angle", "C1,C6-C9", "--json", "-w", ws)
    assert json.loads(r.stdout)["skipped"] == 4  # re-run: nothing to do
    r = _run("crop", "--res", "Low", "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    crop = json.loads(r.stdout)
    assert crop["methods"] == {"align": 20, "box-fallback": 4}
    r = _run("crop", "--res", "Low", "-w", ws)
    assert "face box (profile: points degenerate)" in r.stdout
    r = _run("split", "--res", "Low", "--val-ids", "2", "--seed", "3", "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    split = json.loads(r.stdout)
    assert (
        len(split["train_ids"]) == 2
        and len(split["val_ids"]) == 2
        and not set(split["train_ids"]) & set(split["val_ids"])
    )
    assert (ws / "split" / "val_pairs.csv").is_file()
    r = _run("split", "--res", "Low", "--val-ids", "2", "--order", "sorted", "-w", ws)
    assert r.exit_code == 0 and "Identity-disjoint split (sorted" in r.stdout


def test_invalid_code_is_one_red_line(tmp_path):
    source = make_source(tmp_path / "kface", n_ids=1)
    r = _run("extract", source, "--res", "Low", "--lux", "L1,L31", "-w", tmp_path / "ws")
    assert r.exit_code == 2
    assert "L31 is not a K-Face light (L1-L30)" in r.output and "Traceback" not in r.output


def test_corrupt_zip_exits_non_zero_with_summary(tmp_path):
    source = make_source(tmp_path / "kface", n_ids=2)
    bad = sorted((source / "Low_Resolution").glob("*.zip"))[0]
    bad.write_bytes(b"not a zip")
    r = _run("extract", source, "--res", "Low", "-w", tmp_path / "ws")
    assert r.exit_code == 1
    assert "Failed identities" in r.stdout and bad.stem in r.stdout
    assert "1 of 2 identities failed" in r.output


def test_missing_inputs_name_the_previous_stage(tmp_path):
    r = _run("crop", "-w", tmp_path)
    assert r.exit_code == 2 and "kface extract" in r.output
    r = _run("split", "-w", tmp_path)
    assert r.exit_code == 2 and "kface crop" in r.output
    r = _run("extract", "-w", tmp_path)
    assert r.exit_code == 2 and "no SOURCE given" in r.output
    r = _run("crop", "--mode", "tilt", "-w", tmp_path)
    assert r.exit_code == 2 and "'tilt' is not one of 'align', 'box'" in " ".join(r.output.replace("│", " ").split())
