"""The CLI's own promises: `kface --help` (and each command's --help) imports no heavy library, and
`kface identify` with an ONNX model imports only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from kface_cli.choices import Choice

HEAVY = ("torch", "mediapipe", "faiss", "h5py", "onnxruntime", "onnx", "cv2", "matplotlib")

_PROBE = """
import contextlib, io, json, sys
from kface_cli.cli import app
code = 0
with contextlib.redirect_stdout(io.StringIO()):
    try:
        app(sys.argv[1:], standalone_mode=True)
    except SystemExit as e:
        code = e.code
print(json.dumps([code, sorted(m for m in {modules!r} if m in sys.modules)]))
"""


def _heavy_imports(*args: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``modules`` that ``kface ARGS`` imported, run in a fresh process (which must succeed)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(modules=modules), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code in (0, None), out.stderr
    return loaded


def test_help_imports_no_heavy_library():
    assert _heavy_imports("--help") == []


@pytest.mark.parametrize(
    "command",
    [
        "extract",
        "crop",
        "split",
        "train",
        "export",
        "enroll",
        "identify",
        "evaluate",
        "gallery",
        "verify",
        "embed",
        "detect",
    ],
)
def test_command_help_imports_no_heavy_library(command):
    assert _heavy_imports(command, "--help") == []


def test_the_probe_sees_an_import():
    """The probe itself works: a command that really runs imports its libraries."""
    probe = _PROBE.replace("from kface_cli.cli import app", "from kface_cli.cli import app\nimport numpy, h5py")
    out = subprocess.run(
        [sys.executable, "-c", probe.format(modules=HEAVY), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "h5py" in json.loads(out.stdout.strip().splitlines()[-1])[1]


# ---- one name, one meaning; choices listed; global flags anywhere; deprecated spellings ------
def _visible_options() -> dict[str, list[tuple[str, object]]]:
    """Option name -> [(command, click parameter)] over every command, hidden aliases left out."""
    from typer.main import get_command

    from kface_cli.cli import app

    options: dict[str, list[tuple[str, object]]] = {}
    for name, cmd in get_command(app).commands.items():
        for param in cmd.params:
            if not getattr(param, "hidden", False):
                for opt in [*param.opts, *param.secondary_opts]:
                    options.setdefault(opt, []).append((name, param))
    return options


def _value_type(param) -> type:
    """The Python type an option takes (``int | None`` -> ``int``)."""
    annotation = param.type_descriptor.annotation
    return next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)


def test_an_option_name_means_one_thing_in_every_command():
    options = _visible_options()
    assert {_value_type(p) for _, p in options["-n"]} == {int}  # a count (sample-data), never a name
    assert {_value_type(p) for _, p in options["--ids"]} == {str}  # a list of IDs, never a count
    assert [c for c, _ in options["--batch-size"]] == ["train"]  # the training batch only
    assert [c for c, _ in options["--workers"]] == ["train"]  # DataLoader workers only
    assert [c for c, _ in options["--margin"]] == ["train"]  # the loss margin only
    assert len({p.help for _, p in options["--jobs"]}) == 1 and len(options["--jobs"]) == 3
    model_users = {c for c, _ in options["--model"]}
    assert {"export", "enroll", "identify", "evaluate"} <= model_users
    # every command that may run a TorchScript model offers the explicit opt-in (the others refuse it)
    assert {c for c, _ in options["--trust-model"]} == {"enroll", "identify", "verify", "embed", "evaluate"}


def test_choices_are_listed_in_help():
    options = _visible_options()
    for name in ("--mode", "--order", "--grid", "--format", "--landmarks", "--index", "--per-identity"):
        for command, param in options[name]:
            assert issubclass(_value_type(param), Choice), f"{command} {name} is not a choice"
    from typer.testing import CliRunner

    from kface_cli.cli import app

    help_text = CliRunner().invoke(app, ["crop", "--help"], env={"COLUMNS": "200"}).output
    assert "align|box" in help_text


def test_global_flags_work_before_and_after_the_command(tmp_path):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    runner = CliRunner()
    args = ["-n", "1", "--res", "Low", "--grid", "tutorial", "-j", "1"]
    before = runner.invoke(app, ["--json", "-q", "sample-data", *args, "-w", str(tmp_path / "a")])
    after = runner.invoke(app, ["sample-data", *args, "-w", str(tmp_path / "b"), "--json", "-q"])
    assert before.exit_code == after.exit_code == 0, before.output + after.output
    assert json.loads(before.stdout)["images"] == json.loads(after.stdout)["images"] == 24
    for argv in (["--debug", "crop", "-w", str(tmp_path)], ["crop", "-w", str(tmp_path), "--debug"]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 2 and "Traceback" in r.output
    assert "Traceback" not in runner.invoke(app, ["crop", "-w", str(tmp_path)]).output


def test_old_spellings_still_work_and_warn(tmp_path):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    r = CliRunner().invoke(app, ["sample-data", "--ids", "1", "--res", "Low", "--grid", "tutorial", "--workers", "1",
                                 "-w", str(tmp_path), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["identities"] == 1
    assert "--ids is deprecated" in r.stderr and "--workers is deprecated" in r.stderr


def test_shell_completion_is_offered():
    from typer.testing import CliRunner

    from kface_cli.cli import app

    assert "--show-completion" in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output


#: What `kface identify` loads with an ONNX model: ONNX Runtime, mediapipe's two face graphs,
#: OpenCV and the gallery (h5py); a small gallery is searched in numpy (no faiss).
ONNX_IDENTIFY_IMPORTS = ["cv2", "h5py", "mediapipe", "onnxruntime"]
#: ...and not torch, the onnx package (ONNX Runtime reads the metadata), matplotlib, mediapipe's
#: drawing utilities (they import matplotlib) or its Tasks API.
IDENTIFY_PROBED = (*HEAVY, "mediapipe.python.solutions.drawing_utils", "mediapipe.tasks")


@pytest.mark.slow
def test_onnx_identify_imports_only_what_it_uses(tmp_path):
    from embedding_fixtures import insightface_style_onnx

    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.face.imageio import write_image
    from kface_cli.models.registry import get_backbone

    model = tmp_path / "model.onnx"
    insightface_style_onnx(get_backbone("mbf_small", 32), model)
    crop = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    write_image(tmp_path / "people" / "ann.jpg", crop)
    gallery = tmp_path / "gallery.h5"
    enroll_folder(tmp_path / "people", gallery, load_embedder(model), aligned=True)
    photo = Path(__file__).parent / "fixtures" / "astronaut.jpg"  # a real face: detection and landmarks run
    args = ("identify", str(photo), "--model", str(model), "--gallery", str(gallery), "--json")
    assert _heavy_imports(*args, modules=IDENTIFY_PROBED) == ONNX_IDENTIFY_IMPORTS


def test_memory_errors_are_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.gallery import manage

    def exhausted(*_a, **_k):
        raise MemoryError

    monkeypatch.setattr(manage, "manage_gallery", exhausted)
    result = CliRunner().invoke(app, ["gallery", "--gallery", str(tmp_path / "g.h5")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: out of memory") and len(result.output.strip().splitlines()) == 1
