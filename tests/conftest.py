"""Test-wide settings (no writes to the user's home, quiet progress bars) and the shared fixtures.

The helpers these fixtures are built on live in the ``tests/helpers/`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

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


# -- models --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mbf_model(tmp_path_factory) -> Path:
    """A MobileFaceNet backbone.pth (random weights, 128-d): what ``--model`` loads in CLI tests."""
    import torch

    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "backbone.pth"
    torch.save(get_backbone("mbf", embedding_size=128).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backbone():
    """A small backbone (``helpers.models.NETWORK``, ``EMB``-d) with real BatchNorm statistics."""
    import torch
    from helpers.models import EMB, NETWORK, calibrated

    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    return calibrated(get_backbone(NETWORK, EMB))


@pytest.fixture(scope="module")
def faces():
    """Five synthetic aligned faces, (5, 112, 112, 3) BGR uint8."""
    from kface_cli.embedding.export import synthetic_faces

    return synthetic_faces(5, seed=3)


@pytest.fixture(scope="module")
def reference(backbone, faces):
    """The backbone's unnormalised outputs on ``faces``, computed with torch alone."""
    from helpers.models import torch_reference

    return torch_reference(backbone, faces)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, backbone) -> Path:
    """A workspace holding ``backbone`` as a run (``runs/demo``) and as insightface weights."""
    from helpers.models import write_model_files

    return write_model_files(tmp_path_factory.mktemp("ws"), backbone)
