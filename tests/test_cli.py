"""The CLI's own promises: `kface --help` (and each command's --help) imports no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "mediapipe", "faiss", "h5py", "onnxruntime", "onnx", "cv2", "matplotlib")

_PROBE = """
import contextlib, io, json, sys
from kface_cli.cli import app
with contextlib.redirect_stdout(io.StringIO()):
    try:
        app(sys.argv[1:], standalone_mode=True)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_imports(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        [sys.executable, "-c", probe.format(heavy=HEAVY), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "h5py" in json.loads(out.stdout.strip().splitlines()[-1])
