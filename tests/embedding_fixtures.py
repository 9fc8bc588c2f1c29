"""Fixtures shared by test_embedder.py and test_loading.py: a small calibrated backbone, faces, a workspace of model files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import calibrated

from kface_cli.embedding.embedder import ONNX_INPUT_NAME
from kface_cli.models.registry import get_backbone
from kface_cli.train.checkpoint import capture_rng

NETWORK = "mbf_small"
EMB = 32


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KFACE_CACHE", str(tmp_path_factory.getbasetemp() / "kface-cache"))


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return calibrated(get_backbone(NETWORK, EMB))


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    from kface_cli.embedding.export import synthetic_faces

    return synthetic_faces(5, seed=3)


@pytest.fixture(scope="module")
def reference(backbone, faces) -> np.ndarray:
    """Unnormalised torch outputs on the faces (RGB, (x-127.5)/127.5), computed independently."""
    x = faces[..., ::-1].astype(np.float32)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        return backbone(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, backbone) -> Path:
    root = tmp_path_factory.mktemp("ws")
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    state = backbone.state_dict()
    torch.save(state, run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB}))
    ckpt = {"config": {"network": NETWORK, "embedding_size": EMB}, "backbone": state, "epoch": 3, "rng": capture_rng()}
    torch.save(ckpt, run / "checkpoint.pt")
    bare = root / "insightface"
    bare.mkdir()
    torch.save({f"module.{k}": v for k, v in state.items()}, bare / "backbone.pth")  # DDP-style keys
    return root


def insightface_style_onnx(module: torch.nn.Module, path: Path) -> None:
    """An ONNX file shaped like insightface's model zoo: input 'data', another output name, no metadata."""
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, 3, 112, 112),),
        str(path),
        dynamo=False,
        input_names=[ONNX_INPUT_NAME],
        output_names=["fc1"],
        dynamic_axes={ONNX_INPUT_NAME: {0: "None"}, "fc1": {0: "None"}},
        opset_version=13,
    )
