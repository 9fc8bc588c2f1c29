"""Test-wide settings: no writes to the user's home, quiet progress bars."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_kface_cache(tmp_path_factory):
    """The ONNX Runtime model cache (``$KFACE_CACHE``) goes to a temporary folder, not ~/.cache."""
    old = os.environ.get("KFACE_CACHE")
    os.environ["KFACE_CACHE"] = str(tmp_path_factory.mktemp("kface-cache"))
    yield
    if old is None:
        os.environ.pop("KFACE_CACHE", None)
    else:
        os.environ["KFACE_CACHE"] = old


@pytest.fixture(autouse=True)
def _default_output_mode():
    """Each test starts with kface's default output mode (not --json/--quiet from an earlier test)."""
    from kface_cli import console

    saved = (console.MODE.json, console.MODE.quiet, console.MODE.debug)
    console.set_mode(json_output=False, quiet=False, debug=False)
    yield
    console.set_mode(json_output=saved[0], quiet=saved[1], debug=saved[2])
