"""One JSON schema across every command (README: JSON output), and tables that keep every name and number.

The whole pipeline runs once on a tiny synthetic workspace (through the command line, as a user
would); then one test per command checks its ``--json`` keys and types: a ``schema`` version,
snake_case keys (except in the maps keyed by data, listed in :data:`MAPS`), numbers as numbers
(never "1.4 MiB"), ``null`` for "no match".
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kface_cli import console
from kface_cli.cli import app

pytestmark = pytest.mark.slow

#: Keys whose value is a map keyed by data (codes, FAR levels, model metadata), not by field names.
MAPS = {
    "metadata", "tar_at_far", "dir_at_fpir", "per_condition", "missing_by_code", "methods", "problems", "examples",
    "by_camera", "landmark_sources", "sources", "by_condition",
}  # fmt: skip
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
HUMAN_NUMBER = re.compile(r"^[\d.,]+ ?(B|KiB|MiB|GiB|kB|MB|GB|%|s)$")
TRAIN_TOML = """[train]
network = "mbf_small"
embedding_size = 64
batch_size = 8
epochs = 1
max_steps_per_epoch = 2
bn_recalibration = 0
val_pairs = "none"
workers = 0
"""
NUM = (int, float)
STR_OR_NONE = (str, type(None))
#: Per command: keys every --json output has, with their types (others may be added; see README).
EXPECTED = {
    "sample-data": {"root": str, "identities": int, "images": int, "bytes": int, "zips": list},
    "extract": {"out": str, "identities": int, "images": int, "missing_by_code": dict, "seconds": float},
    "crop": {"out": str, "manifest": str, "size": int, "cropped": int, "methods": dict, "seconds": float},
    "split": {"train_ids": list, "val_ids": list, "same_pairs": int, "diff_pairs": int, "pairs_csv": str},
    "train": {"run_dir": str, "num_classes": int, "history": list, "elapsed_s": float, "world_size": int},
    "export": {"path": str, "fingerprint": str, "size_bytes": int, "embedding_size": int, "metadata": dict},
    "enroll": {"gallery": str, "model": dict, "templates_added": int, "identities": list, "problems": list},
    "identify": {
        "threshold": float,
        "threshold_source": str,
        "model": dict,
        "face_count": int,
        "named_count": int,
        "warnings": list,
        "images": list,
    },
    "gallery": {"facts": dict, "identities": list, "removed": list, "index": dict},
    "evaluate": {"model": dict, "protocol": str, "accuracy": float, "tar_at_far": dict, "n_pairs": int},
    "verify": {
        "same": bool,
        "distance": float,
        "cosine": float,
        "threshold": float,
        "threshold_source": str,
        "model": dict,
        "warnings": list,
        "faces": list,
    },
    "embed": {"out": str, "names_file": STR_OR_NONE, "row_count": int, "embedding_size": int, "faces": list},
    "detect": {"face_count": int, "images": list, "annotated": list, "seconds": float},
}


def _run(args: list[str], code: int = 0) -> str:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == code, r.output
    return r.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    w = ["-w", str(ws)]
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, code: int = 0) -> None:
        outputs[name] = _run(
            [name, *args, "--json", *(w if name != "detect" else [])], code
        )  # detect needs no workspace

    run("sample-data", "--ids", "4", "--res", "Low")
    run("extract", "--res", "Low")
    run("crop", "--res", "Low")
    run("split", "--res", "Low", "--val-ids", "2")
    (ws / "tiny.toml").write_text(TRAIN_TOML)
    run("train", "--config", str(ws / "tiny.toml"), "--name", "t")
    model = str(ws / "t.onnx")
    run("export", str(ws / "runs" / "t"), "--out", model)
    raw = ws / "raw" / "Low"
    val = sorted(p.name for p in (ws / "split" / "val").iterdir())
    for ident in val:  # one photo each enrolled (with its K-Face landmarks), another as a probe
        for sub, dest in (("L1/E01/C7", ws / "people" / ident / "C7"), ("L3/E02/C8", ws / "probes" / f"{ident}_C8")):
            dest.parent.mkdir(parents=True, exist_ok=True)
            for ext in (".jpg", ".txt"):
                shutil.copy(raw / ident / "S001" / f"{sub}{ext}", dest.with_suffix(ext))
    run("enroll", str(ws / "people"), "--model", model)
    run("identify", str(ws / "probes"), "--model", model, "--threshold", "0")  # nobody matches: null names
    run("gallery")
    run("evaluate", "--model", model)
    probe = str(ws / "probes" / f"{val[0]}_C8.jpg")
    run("verify", str(ws / "people" / val[0] / "C7.jpg"), probe, "--model", model, "--threshold", "4")
    run("embed", str(ws / "probes"), "--model", model, "--out", str(ws / "e.npy"))
    run("detect", str(ws / "probes"), "--landmarks", "annotation")
    return {"ws": ws, "model": model, "json": {k: json.loads(v) for k, v in outputs.items()}}


def _check_keys(value, path: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert SNAKE.fullmatch(key), f"{path}/{key} is not snake_case"
            assert key != "faces" or isinstance(item, list), f"{path}/faces is not a list (counts: face_count)"
            if key not in MAPS:
                _check_keys(item, f"{path}/{key}")
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, path + "[]")
    elif isinstance(value, str):
        assert not HUMAN_NUMBER.match(value), f"{path} = {value!r}: a number in a string"


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_json_schema(world, command):
    data = world["json"][command]
    assert data["schema"] == console.SCHEMA_VERSION
    for key, kind in EXPECTED[command].items():
        assert isinstance(data[key], kind) and not (kind is int and isinstance(data[key], bool)), (key, data[key])
    _check_keys(data)


def test_no_match_is_null_and_candidates_include_the_best(world):
    identify = world["json"]["identify"]
    faces = [f for image in identify["images"] for f in image["faces"]]
    assert faces and identify["named_count"] == 0 and identify["threshold_source"] == "given"
    assert len(identify["model"]["fingerprint"]) == 20
    for face in faces:
        assert face["name"] is None and face["candidates"][0]["distance"] == face["distance"]
    assert any("synthetic sample data" in w for w in identify["warnings"])  # trained on sample data only
    assert world["json"]["verify"]["warnings"] == identify["warnings"]
    facts = world["json"]["gallery"]["facts"]
    assert isinstance(facts["file_bytes"], int) and facts["file_bytes"] > 0


def _at_80_columns(monkeypatch, args: list[str]) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=80, soft_wrap=True))
    _run(args)
    return buf.getvalue()


def test_identify_and_evaluate_tables_at_80_columns(world, monkeypatch):
    ws, model = world["ws"], world["model"]
    monkeypatch.chdir(ws)
    text = _at_80_columns(monkeypatch, ["identify", "probes", "--model", model])
    assert "…" not in text
    for image in world["json"]["identify"]["images"]:
        assert Path(image["image"]).relative_to(ws).as_posix() in text  # full relative path, on one line
        for face in image["faces"]:
            assert f"{face['distance']:.4f}" in text
    text = _at_80_columns(monkeypatch, ["evaluate", "--model", model, "--no-flip"])
    assert "…" not in text
    evaluation = json.loads(_run(["evaluate", "--model", model, "--no-flip", "--json"]))
    assert f"{100 * evaluation['accuracy']:.2f}%" in text and f"{evaluation['auc']:.4f}" in text


def test_format_csv_and_json(world):
    out = _run(["gallery", "-w", str(world["ws"]), "--format", "csv"])
    assert out.startswith("name,templates\n") and "Gallery" not in out  # data only: the header first
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == [i["name"] for i in world["json"]["gallery"]["identities"]]
    assert json.loads(_run(["gallery", "-w", str(world["ws"]), "--format", "json"]))["schema"] == 2
