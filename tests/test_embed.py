"""Embedder: every model format and backend, flip TTA, batching, fingerprints and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kface_cli.embed import (
    ONNX_INPUT_NAME,
    embedder_from_module,
    load_embedder,
    state_dict_digest,
)
from kface_cli.errors import InputError, KFaceError, ModelMismatchError
from kface_cli.models.registry import get_backbone
from model_helpers import calibrated

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
    from kface_cli.export import synthetic_faces

    return synthetic_faces(5, seed=3)


@pytest.fixture(scope="module")
def reference(backbone, faces) -> np.ndarray:
    """Unnormalised torch outputs on the faces (RGB, (x-127.5)/127.5), computed independently."""
    x = faces[..., ::-1].astype(np.float32)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        return backbone(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, backbone) -> Path:
    root = tmp_path_factory.mktemp("ws")
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    state = backbone.state_dict()
    torch.save(state, run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB}))
    ckpt = {"config": {"network": NETWORK, "embedding_size": EMB}, "backbone": state, "epoch": 3, "rng": {"numpy": np.random.get_state()}}
    torch.save(ckpt, run / "checkpoint.pt")
    bare = root / "insightface"
    bare.mkdir()
    torch.save({f"module.{k}": v for k, v in state.items()}, bare / "backbone.pth")  # DDP-style keys
    return root


def test_module_embedder_is_normalised_and_matches_torch(backbone, faces, reference):
    emb = embedder_from_module(backbone, network=NETWORK)
    out = emb.embed(faces)
    assert out.shape == (5, EMB) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, _unit(reference), atol=1e-5)
    assert emb.embedding_size == EMB and emb.network == NETWORK and emb.backend == "torch"
    # batching does not change results; one face (H, W, 3) is accepted too
    np.testing.assert_allclose(emb.embed(faces, batch_size=3), out, atol=1e-5)
    np.testing.assert_allclose(emb.embed(faces[2])[0], out[2], atol=1e-5)
    assert emb.embed(faces[:0]).shape == (0, EMB)


def test_flip_tta_sums_face_and_mirror(backbone, faces, reference):
    emb = embedder_from_module(backbone, flip=True)
    mirrored = embedder_from_module(backbone).embed(faces[:, :, ::-1])  # normalised; need raw: recompute
    x = faces[:, :, ::-1][..., ::-1].astype(np.float32)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        raw_mirror = backbone(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(_unit(raw_mirror), mirrored, atol=1e-5)
    np.testing.assert_allclose(emb.embed(faces), _unit(reference + raw_mirror), atol=1e-5)


def test_training_mode_is_restored(backbone, faces):
    backbone.train()
    try:
        embedder_from_module(backbone).embed(faces[:2])
        assert backbone.training
    finally:
        backbone.eval()


@pytest.mark.parametrize(
    ("which", "backend"),
    [(w, "torch") for w in ("run", "run-name", "latest", "checkpoint", "bare+network", "bare-inferred")]
    + [("run", "onnx"), ("checkpoint", "auto")],
)
def test_every_torch_format_and_backend(workspace, faces, reference, which, backend):
    args: dict = {"backend": backend}
    model = {
        "run": workspace / "runs" / "demo",
        "run-name": "demo",
        "latest": None,
        "checkpoint": workspace / "runs" / "demo" / "checkpoint.pt",
        "bare+network": workspace / "insightface" / "backbone.pth",
        "bare-inferred": workspace / "insightface" / "backbone.pth",
    }[which]
    if which == "bare+network":
        args["network"] = "mobilefacenet_small"  # aliases are accepted
    emb = load_embedder(model, workdir=workspace, **args)
    assert emb.network == NETWORK and emb.embedding_size == EMB
    assert emb.backend == ("torch" if backend == "torch" else "onnx")
    cos = (emb.embed(faces) * _unit(reference)).sum(axis=1)
    assert cos.min() >= 0.9999


def test_fingerprint_stability(backbone, workspace):
    a = load_embedder(workspace / "runs" / "demo", backend="torch")
    b = load_embedder(workspace / "insightface" / "backbone.pth", backend="onnx")
    c = embedder_from_module(backbone)
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert len(a.fingerprint) == 20 and int(a.fingerprint, 16) >= 0
    assert load_embedder(workspace / "runs" / "demo", flip=True, backend="torch").fingerprint != a.fingerprint
    changed = get_backbone(NETWORK, EMB).eval()
    changed.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        changed.state_dict()["features.layers.3.weight"][0] += 1e-3  # one weight
    assert state_dict_digest(changed.state_dict()) != state_dict_digest(backbone.state_dict())
    assert embedder_from_module(changed).fingerprint != a.fingerprint


def _insightface_style_onnx(module: torch.nn.Module, path: Path) -> None:
    """An ONNX file shaped like insightface's model zoo: input 'data', another output name, no metadata."""
    torch.onnx.export(
        module.eval(), (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, input_names=[ONNX_INPUT_NAME],
        output_names=["fc1"], dynamic_axes={ONNX_INPUT_NAME: {0: "None"}, "fc1": {0: "None"}}, opset_version=13,
    )


def test_foreign_onnx_model(backbone, faces, reference, tmp_path):
    import onnx

    path = tmp_path / "w600k_like.onnx"
    _insightface_style_onnx(backbone, path)
    emb = load_embedder(path)
    assert emb.backend == "onnx" and emb.network == "onnx" and emb.embedding_size == EMB
    assert (emb.embed(faces) * _unit(reference)).sum(axis=1).min() >= 0.9999
    # metadata edits keep the fingerprint; a weight change does not
    proto = onnx.load(str(path))
    prop = proto.metadata_props.add()
    prop.key, prop.value = "note", "edited"
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    assert load_embedder(tmp_path / "edited.onnx").fingerprint == emb.fingerprint
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(tmp_path / "changed.onnx"))
    assert load_embedder(tmp_path / "changed.onnx").fingerprint != emb.fingerprint
    with pytest.raises(KFaceError, match="ONNX Runtime only"):
        load_embedder(path, backend="torch")


def test_errors_are_clear(workspace, tmp_path, faces):
    with pytest.raises(InputError, match="model not found"):
        load_embedder(tmp_path / "nope.pth")
    with pytest.raises(InputError, match="no trained model"):
        load_embedder(None, workdir=tmp_path)
    with pytest.raises(KFaceError, match="unknown network"):
        load_embedder(workspace / "insightface" / "backbone.pth", network="resnet9000")
    with pytest.raises(ModelMismatchError, match="does not fit backbone 'r18'"):
        load_embedder(workspace / "insightface" / "backbone.pth", network="r18")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InputError):
        load_embedder(tmp_path / "garbage.pth")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(KFaceError):
        load_embedder(tmp_path / "broken.onnx")
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "head.pth")
    with pytest.raises(ModelMismatchError, match="--network"):
        load_embedder(tmp_path / "head.pth")
    emb = load_embedder(workspace / "runs" / "demo", backend="torch")
    with pytest.raises(InputError, match="aligned faces"):
        emb.embed(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        emb.embed(faces.astype(np.float32))
    with pytest.raises(KFaceError, match="auto, torch, onnx"):
        load_embedder(workspace / "runs" / "demo", backend="tensorrt")  # type: ignore[arg-type]
