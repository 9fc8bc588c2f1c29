"""Small random backbones that behave like real ones, and the model files made from them (embedder,
loading, export, invert and CLI tests; the fixtures are in ``tests/conftest.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kface_cli.embedding.embedder import ONNX_INPUT_NAME
from kface_cli.train.checkpoint import capture_rng

#: The small network and embedding size of the model-file tests.
NETWORK = "mbf_small"
EMB = 32


def calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of real activations: realistic outputs that differ
    between faces, and no denormal floats (which make CPU convolutions 5-10x slower)."""
    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.face.preprocess import faces_to_input

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(faces_to_input(synthetic_faces(8, seed=42))))
    return net.eval()


def torch_reference(backbone: torch.nn.Module, faces: np.ndarray) -> np.ndarray:
    """Unnormalised torch outputs on ``faces`` (RGB, (x-127.5)/127.5), computed independently of kface."""
    x = faces[..., ::-1].astype(np.float32)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        return backbone(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_model_files(root: Path, backbone: torch.nn.Module) -> Path:
    """``root/runs/demo`` (backbone.pth, config.json, checkpoint.pt) and ``root/insightface/backbone.pth``
    (DDP-style ``module.`` keys) from ``backbone``; returns ``root``."""
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    state = backbone.state_dict()
    torch.save(state, run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB}))
    ckpt = {"config": {"network": NETWORK, "embedding_size": EMB}, "backbone": state, "epoch": 3, "rng": capture_rng()}
    torch.save(ckpt, run / "checkpoint.pt")
    bare = root / "insightface"
    bare.mkdir()
    torch.save({f"module.{k}": v for k, v in state.items()}, bare / "backbone.pth")
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
