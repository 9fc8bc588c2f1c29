"""The CLI's own promises: `kface --help` (and each command's --help) imports no heavy library, and
`kface identify` with an ONNX model imports only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    "command", ["extract", "crop", "split", "train", "export", "enroll", "identify", "evaluate", "gallery"]
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


#: What `kface identify` loads with an ONNX model: ONNX Runtime, mediapipe's two face graphs,
#: OpenCV, the gallery (h5py) and its index (faiss).
ONNX_IDENTIFY_IMPORTS = ["cv2", "faiss", "h5py", "mediapipe", "onnxruntime"]
#: ...and not torch, the onnx package (ONNX Runtime reads the metadata), matplotlib, mediapipe's
#: drawing utilities (they import matplotlib) or its Tasks API.
IDENTIFY_PROBED = (*HEAVY, "mediapipe.python.solutions.drawing_utils", "mediapipe.tasks")


@pytest.mark.slow
def test_onnx_identify_imports_only_what_it_uses(tmp_path):
    from embedding_fixtures import insightface_style_onnx

    from kface_cli.embedding.loading import load_embedder
    from kface_cli.face.imageio import write_image
    from kface_cli.gallery.enroll import enroll_folder
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
