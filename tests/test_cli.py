"""The CLI's own promises: `kface --help` (and each command's --help) imports no heavy library, and
`kface identify` with an ONNX model imports only what it uses."""

from __future__ import annotations

import json
import os
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


# ---- only the command that runs is loaded (kface_cli.cli.common.LazyGroup) ------------------
CLI_MODULES = tuple(f"kface_cli.cli.{m}" for m in ("data", "train", "deploy", "evaluate", "research", "models"))


def _run_probe(*args: str, modules: tuple[str, ...], preload: str = "") -> tuple[int, list[str], str]:
    """(exit code, the ``modules`` loaded, standard output) of ``kface ARGS`` in a fresh process."""
    probe = f"""
import contextlib, io, json, sys
{preload}
from kface_cli.cli import app
code, out = 0, io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        app(sys.argv[1:], standalone_mode=True)
    except SystemExit as e:
        code = e.code
print(json.dumps([code, sorted(m for m in {modules!r} if m in sys.modules), out.getvalue()]))
"""
    env = {**os.environ, "COLUMNS": "200", "KFACE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300, env=env)
    code, loaded, out = json.loads(done.stdout.strip().splitlines()[-1])
    return code, loaded, out


def test_help_lists_every_command_without_loading_them():
    code, loaded, lazy = _run_probe("--help", modules=CLI_MODULES)
    assert code in (0, None) and loaded == []
    preload = "\n".join(f"import {m}" for m in CLI_MODULES)  # the real commands, every one loaded
    code, loaded, full = _run_probe("--help", modules=CLI_MODULES, preload=preload)
    assert loaded == sorted(CLI_MODULES)
    assert lazy == full  # the same names, lines and order
    assert all(name in lazy for name in ("sample-data", "identify", "invert", "models"))


def test_command_table_matches_the_commands():
    from kface_cli.cli import COMMANDS, all_commands

    group = all_commands()
    assert list(group.list_commands(None)) == list(COMMANDS)  # nothing registered outside the table
    for name, (module, line) in COMMANDS.items():
        command = group.commands[name]
        assert command.help.split("\n\n")[0] == line, name
        callbacks = [command.callback, *(c.callback for c in getattr(command, "commands", {}).values())]
        assert any(c is not None and c.__module__ == f"kface_cli.cli.{module}" for c in callbacks), name


def test_a_command_loads_only_its_module_and_no_pydantic(tmp_path):
    """identify's options (paths, a gallery path, numbers, choices) are read without pydantic."""
    args = ["identify", str(tmp_path / "missing.jpg"), "-g", str(tmp_path / "g.h5"), "--top-k", "3",
            "--min-face", "40", "--index", "FLAT", "--threshold", "1.2", "--landmarks", "auto"]  # fmt: skip
    code, loaded, _ = _run_probe(*args, modules=(*CLI_MODULES, "pydantic", "typer._adapters"))
    assert code == 2  # the photo is missing: a user error, after every option was read
    assert loaded == ["kface_cli.cli.deploy"]
    code, loaded, _ = _run_probe("identify", "x.jpg", "--top-k", "1_0", modules=("pydantic",))
    assert code == 2 and loaded == ["pydantic"]  # an unusual spelling goes to Typer's own adapter


_BLAS_PROBE = """
import contextlib, ctypes, glob, io, json, os, sys
from kface_cli.cli import app
with contextlib.redirect_stdout(io.StringIO()):
    try:
        app(sys.argv[1:], standalone_mode=True)
    except SystemExit:
        pass
import numpy
libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "*openblas*"))
threads = None
for lib in libs:
    for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        if hasattr(ctypes.CDLL(lib), name):
            threads = getattr(ctypes.CDLL(lib), name)()
print(json.dumps([threads, os.environ.get("OPENBLAS_NUM_THREADS")]))
"""


@pytest.mark.parametrize("command", ["identify", "verify", "detect"])
def test_photo_commands_start_one_blas_thread(tmp_path, command):
    """OpenBLAS's spinning threads are not started for a photo command; the environment is left as it was."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    }
    args = [command, str(tmp_path / "missing.jpg"), *([str(tmp_path / "other.jpg")] if command == "verify" else [])]

    def probe(extra: dict) -> list:
        done = subprocess.run([sys.executable, "-c", _BLAS_PROBE, *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=300)  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    threads, left = probe({})
    if threads is None:
        pytest.skip("numpy's OpenBLAS does not say its thread count here")
    assert threads == 1 and left is None
    assert probe({"OPENBLAS_NUM_THREADS": "2"}) == [2, "2"]  # the user's choice wins


_EXIT_PROBE = """
import atexit, sys
class Teardown:
    def __del__(self):
        print("teardown ran", file=sys.stderr)
kept = Teardown()  # freed only by the interpreter's teardown
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
from kface_cli.cli import main
sys.argv = ["kface", *sys.argv[1:]]
main()
"""


def test_photo_commands_exit_without_teardown_but_with_exit_handlers_and_output(tmp_path):
    from kface_cli.face.imageio import write_image

    photo = tmp_path / "blank.jpg"
    write_image(photo, np.full((64, 64, 3), 128, np.uint8))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _EXIT_PROBE, *args], capture_output=True, text=True, timeout=300)

    done = run("detect", str(photo), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["images"][0]["faces"] == []  # all output, flushed
    assert "exit handler ran" in done.stderr and "teardown ran" not in done.stderr
    unreadable = tmp_path / "bad.jpg"
    unreadable.write_bytes(b"not an image")
    none_read = run("detect", str(unreadable))  # no photo could be read: the command's own result, 1
    assert none_read.returncode == 1 and "teardown ran" not in none_read.stderr
    missing = run("detect", str(tmp_path / "missing.jpg"))  # an error: the usual exit
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "exit handler ran" in missing.stderr and "teardown ran" in missing.stderr
    other = run("--version")  # every other command: Python's usual exit
    assert other.returncode == 0 and "teardown ran" in other.stderr and "exit handler ran" in other.stderr


def test_a_typo_still_gets_a_suggestion():
    """In a fresh process, where no command is loaded yet, a misspelt command is still matched."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "kface_cli", "idnetify"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Did you mean 'identify'?" in done.stderr


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
    from kface_cli.cli import all_commands

    options: dict[str, list[tuple[str, object]]] = {}
    for name, cmd in all_commands().commands.items():
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
#: drawing utilities (they import matplotlib) or its Tasks API, pydantic (Typer's adapters: option
#: values are converted directly, kface_cli/cli/coercion.py) or absl's Python logging (unused).
IDENTIFY_PROBED = (*HEAVY, "mediapipe.python.solutions.drawing_utils", "mediapipe.tasks", "pydantic", "absl.logging")


@pytest.mark.slow
def test_onnx_identify_imports_only_what_it_uses(tmp_path):
    from helpers.models import insightface_style_onnx

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


# ------------------------------------------------------------------------------------------
# Real inputs, right answers (issue 20): square photos, CSV that is data, every face, no guesses
# ------------------------------------------------------------------------------------------


def test_flags_show_no_metavar_and_take_no_value(tmp_path):
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.cli.common import check_flag_values as _check_flag_values
    from kface_cli.errors import KFaceError

    for argv, flag in (
        (["identify", "--help"], "--aligned"),
        (["--help"], "--version"),
        (["train", "--help"], "--resize-images"),
    ):
        text = CliRunner().invoke(app, argv, env={"COLUMNS": "200"}).output
        assert flag in text and "<bool>" not in text
    with pytest.raises(KFaceError, match="--quiet takes no value: 'true'"):
        _check_flag_values(["detect", "photo.jpg", "--quiet", "true"])
    _check_flag_values(["detect", "true"])  # a photo called "true" stays a photo
    r = subprocess.run(
        [sys.executable, "-m", "kface_cli", "-q", "true", "detect", "x.jpg"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "-q takes no value" in r.stderr


def test_unknown_and_empty_names_are_refused_by_enroll_and_crop(tmp_path):
    from helpers.photos import head_and_shoulders
    from typer.testing import CliRunner

    from kface_cli.cli import app

    head_and_shoulders(tmp_path / "a" / "unknown" / "1.jpg")
    head_and_shoulders(tmp_path / "b" / "UNKNOWN.jpg")
    runner = CliRunner()
    for argv in (
        ["enroll", str(tmp_path / "a"), "-g", str(tmp_path / "g.h5")],
        ["crop", str(tmp_path / "b"), "-w", str(tmp_path)],
    ):
        r = runner.invoke(app, argv)
        assert r.exit_code == 2 and "cannot be a person's name" in r.output and "could never be told apart" in r.output
    assert not (tmp_path / "g.h5").exists()


def test_crop_reads_flat_files_named_by_person_as_enroll_does(tmp_path):
    from helpers.photos import group_of_six, head_and_shoulders
    from typer.testing import CliRunner

    from kface_cli.cli import app

    people = tmp_path / "people"
    head_and_shoulders(people / "Eileen Collins.png")
    group_of_six(people / "Crew" / "group.jpg")
    r = CliRunner().invoke(app, ["crop", str(people), "-w", str(tmp_path / "ws")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "ws" / "faces" / "people"
    assert (out / "Eileen Collins" / "Eileen Collins_png.jpg").is_file() and (out / "Crew" / "group.jpg").is_file()
    assert "Crew/group.jpg: 6 faces: used the largest" in r.stderr  # as enroll warns about a group photo


def test_detect_table_at_80_columns_cuts_no_file_name(tmp_path):
    from helpers.photos import group_of_six

    photo = tmp_path / "a" / "long" / "folder" / "unmistakable_photo_name_0042.jpg"
    group_of_six(photo)
    for width in ("80", "60"):
        env = {**os.environ, "COLUMNS": width}
        r = subprocess.run(
            [sys.executable, "-m", "kface_cli", "detect", str(photo)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert max(len(line) for line in r.stdout.splitlines()) <= int(width)
        assert r.stdout.count("unmistakable_photo_name_0042.jpg") == 6  # whole, on one line, for each face


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """A gallery of the astronaut (from a 224 px profile picture) and a name with a comma and quotes."""
    import torch
    from helpers.photos import head_and_shoulders
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.models.registry import get_backbone

    root = tmp_path_factory.mktemp("enrolled")
    torch.manual_seed(0)
    torch.save(get_backbone("mbf", embedding_size=128).state_dict(), root / "backbone.pth")
    model = ["-m", str(root / "backbone.pth"), "--network", "mbf"]
    people = root / "people"
    head_and_shoulders(people / 'Collins, Eileen "Astronaut"' / "profile.jpg")
    r = CliRunner().invoke(app, ["enroll", str(people), "-g", str(root / "g.h5"), *model, "--json"])
    assert r.exit_code == 0, r.output
    return {"root": root, "model": model, "gallery": ["-g", str(root / "g.h5")]}


@pytest.mark.slow
def test_square_profile_picture_is_detected_everywhere(enrolled, tmp_path):
    """A 224 px head-and-shoulders photo: a face box, not the whole square, in every command."""
    from helpers.photos import head_and_shoulders
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.gallery.store import Gallery

    runner = CliRunner()
    photo = tmp_path / "profile.jpg"
    head_and_shoulders(photo)
    (stored,) = Gallery(enrolled["root"] / "g.h5").read(details=True).boxes  # enroll: the face's box
    assert 20 < stored[2] < 120
    detected = json.loads(runner.invoke(app, ["--json", "detect", str(photo)]).stdout)
    face = detected["images"][0]["faces"][0]
    assert detected["face_count"] == 1 and face["landmarks"] != "aligned-crop" and 20 < face["box"][2] < 120
    found = json.loads(
        runner.invoke(app, ["identify", str(photo), *enrolled["gallery"], *enrolled["model"], "--json"]).stdout
    )
    face = found["images"][0]["faces"][0]
    assert face["name"] == 'Collins, Eileen "Astronaut"' and 20 < face["box"][2] < 120
    r = runner.invoke(app, ["embed", str(photo), "-o", str(tmp_path / "e.h5"), *enrolled["model"], "--json"])
    assert 20 < json.loads(r.stdout)["faces"][0]["box"][2] < 120
    aligned = runner.invoke(app, ["detect", str(photo), "--aligned", "--json"])  # when the user says so
    assert json.loads(aligned.stdout)["images"][0]["faces"][0]["box"] == [0.0, 0.0, 224.0, 224.0]


@pytest.mark.slow
def test_identify_csv_is_data_and_json_global_option(enrolled, tmp_path):
    import csv
    import io

    from helpers.photos import group_of_six, head_and_shoulders
    from typer.testing import CliRunner

    from kface_cli.cli import app

    runner = CliRunner()
    head_and_shoulders(tmp_path / "probes" / "one.jpg")
    group_of_six(tmp_path / "probes" / "six.jpg")
    args = ["identify", str(tmp_path / "probes"), *enrolled["gallery"], *enrolled["model"]]
    r = runner.invoke(app, ["--format", "csv", *args, "--csv", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 7 and [r["face"] for r in rows] == ["1", "1", "2", "3", "4", "5", "6"]  # one row per face
    for row in rows:
        x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
        assert w > 20 and h > 20 and 0 <= float(row["distance"]) <= 4
    assert rows[0]["name"] == 'Collins, Eileen "Astronaut"' and rows[0]["candidate1"] == rows[0]["name"]
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == r.stdout  # the same columns in the file
    verify = runner.invoke(
        app,
        [
            "--format",
            "json",
            "verify",
            str(tmp_path / "probes" / "six.jpg"),
            str(tmp_path / "probes" / "one.jpg"),
            *enrolled["model"],
        ],
    )
    data = json.loads(verify.stdout)
    assert data["faces"][0]["face_count"] == 6 and len(data["faces"][0]["box"]) == 4
    assert "6 faces, used the largest" in verify.stderr


@pytest.mark.slow
def test_embed_all_faces_keeps_six_faces_with_boxes(enrolled, tmp_path):
    import csv

    import h5py
    from helpers.photos import group_of_six
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.deploy.compare import load_embeddings

    runner = CliRunner()
    photo = tmp_path / "crew.jpg"
    group_of_six(photo)
    one = runner.invoke(app, ["embed", str(photo), "-o", str(tmp_path / "one.npy"), *enrolled["model"]])
    assert one.exit_code == 0 and "crew.jpg: 6 faces, used the largest: face 1 of 6 (box" in one.stderr
    assert load_embeddings(tmp_path / "one.npy")[1].shape == (1, 128)
    every = runner.invoke(app, ["embed", str(photo), "--all-faces", "-o", str(tmp_path / "all.h5"), *enrolled["model"]])
    assert every.exit_code == 0 and "used the largest" not in every.stderr
    with h5py.File(tmp_path / "all.h5") as f:
        assert (
            f["embeddings"].shape == (6, 128)
            and f["boxes"].shape == (6, 4)
            and list(f["faces"][()]) == [1, 2, 3, 4, 5, 6]
        )
        assert all(n.decode() == str(photo) for n in f["names"][()])
    runner.invoke(app, ["embed", str(photo), "--all-faces", "-o", str(tmp_path / "all.npy"), *enrolled["model"]])
    rows = list(csv.DictReader((tmp_path / "all.faces.csv").open(encoding="utf-8")))
    assert len(rows) == 6 and {r["image"] for r in rows} == {str(photo)} and all(float(r["w"]) > 20 for r in rows)


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
