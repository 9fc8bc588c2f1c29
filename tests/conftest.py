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

    saved = dict(vars(console.MODE))
    vars(console.MODE).update(vars(console.OutputMode()))
    yield
    vars(console.MODE).update(saved)
