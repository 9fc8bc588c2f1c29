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
