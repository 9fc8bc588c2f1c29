"""ONNX -> kface backbone weights (train --init with an ONNX model or a pack): exact, or refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hub_helpers import decoy_onnx
from model_helpers import calibrated

from kface_cli.embedding.embedder import onnx_bytes_from_module, ort_forward, ort_session
from kface_cli.embedding.export import synthetic_faces
from kface_cli.embedding.onnx_import import MAX_COSINE_GAP, NotMappable, onnx_to_weights
from kface_cli.face.preprocess import faces_to_input
from kface_cli.models.registry import get_backbone


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.mark.parametrize("network", ["mbf_small", pytest.param("r18", marks=pytest.mark.slow)])
def test_exported_backbone_maps_back_exactly(tmp_path, network):
    torch.manual_seed(5)
    original = calibrated(get_backbone(network, 32))
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_bytes_from_module(original, 17))  # no kface metadata: the network is found
    weights = onnx_to_weights(path, network if network == "r18" else None)
    assert weights.network == network and weights.embedding_size == 32
    module = get_backbone(network, 32)
    module.load_state_dict(weights.state_dict, strict=True)  # every kface parameter is filled
    x = faces_to_input(synthetic_faces(6, seed=11))  # other faces than the check's
    with torch.no_grad():
        got = module.eval()(torch.from_numpy(x)).numpy()
    ref = ort_forward(ort_session(path))(x)
    assert (1 - _cosines(got, ref)).max() <= MAX_COSINE_GAP


def test_unmappable_models_are_refused_with_the_backbone_pth_route(tmp_path):
    with pytest.raises(NotMappable, match="not a face-embedding model|cannot be mapped") as e:
        onnx_to_weights(decoy_onnx(tmp_path / "decoy.onnx", size=112))
    assert "backbone.pth" in str(e.value)
    torch.manual_seed(0)
    path = tmp_path / "mbf.onnx"
    path.write_bytes(onnx_bytes_from_module(calibrated(get_backbone("mbf_small", 32)), 17))
    with pytest.raises(NotMappable, match=r"cannot be mapped exactly.*r18: .*convolutions") as e:
        onnx_to_weights(path, "r18")  # the wrong network: refused, never half-loaded
    assert len(str(e.value).splitlines()) == 1


def test_train_init_accepts_a_pack_name(tmp_path, monkeypatch):
    from kface_cli.hub.fetch import fetch_pack
    from kface_cli.train.loop import _read_init

    monkeypatch.setenv("KFACE_HOME", str(tmp_path / "home"))
    torch.manual_seed(2)
    original = calibrated(get_backbone("mbf_small", 32))
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_bytes_from_module(original, 17))
    fetch_pack(str(path), name="tinypack")
    state, source = _read_init("tinypack", "mbf_small")
    assert source.name == "tiny.onnx"
    module = get_backbone("mbf_small", 32)
    module.load_state_dict(state, strict=True)
    x = torch.from_numpy(faces_to_input(synthetic_faces(3, seed=1)))
    with torch.no_grad():
        assert (1 - _cosines(module.eval()(x).numpy(), original(x).numpy())).max() <= MAX_COSINE_GAP
