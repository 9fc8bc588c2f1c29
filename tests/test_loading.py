"""Loading every kind of model file (run folders, checkpoints, backbone.pth, ONNX, TorchScript) safely."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from embedding_fixtures import (  # noqa: F401 (fixtures)
    EMB,
    NETWORK,
    _isolated_cache,
    backbone,
    faces,
    insightface_style_onnx,
    reference,
    unit,
    workspace,
)

from kface_cli.embedding.embedder import embedder_from_module, state_dict_digest
from kface_cli.embedding.loading import load_embedder
from kface_cli.errors import InputError, KFaceError, ModelMismatchError
from kface_cli.models.registry import get_backbone


@pytest.mark.parametrize(
    ("which", "backend"),
    [("run", "torch")]  # the quick subset loads one format; the others are slow (a second each)
    + [
        pytest.param(w, b, marks=pytest.mark.slow)
        for w, b in [(w, "torch") for w in ("run-name", "latest", "checkpoint", "bare+network", "bare-inferred")]
        + [("run", "onnx"), ("checkpoint", "auto")]
    ],
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
    cos = (emb.embed(faces) * unit(reference)).sum(axis=1)
    assert cos.min() >= 0.9999


@pytest.mark.slow
def test_fingerprint_stability(backbone, workspace):
    a = load_embedder(workspace / "runs" / "demo", backend="torch")
    b = load_embedder(workspace / "insightface" / "backbone.pth", backend="onnx")
    c = embedder_from_module(backbone)
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert re.fullmatch(r"[0-9a-f]{20}", a.fingerprint)
    assert load_embedder(workspace / "runs" / "demo", flip=True, backend="torch").fingerprint != a.fingerprint
    changed = get_backbone(NETWORK, EMB).eval()
    changed.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        changed.state_dict()["features.layers.3.weight"][0] += 1e-3  # one weight
    assert state_dict_digest(changed.state_dict()) != state_dict_digest(backbone.state_dict())
    assert embedder_from_module(changed).fingerprint != a.fingerprint


@pytest.mark.slow
def test_foreign_onnx_model(backbone, faces, reference, tmp_path):
    import onnx

    path = tmp_path / "w600k_like.onnx"
    insightface_style_onnx(backbone, path)
    emb = load_embedder(path)
    assert emb.backend == "onnx" and emb.network == "onnx" and emb.embedding_size == EMB
    assert (emb.embed(faces) * unit(reference)).sum(axis=1).min() >= 0.9999
    # metadata edits keep the fingerprint; a weight change does not
    proto = onnx.load(str(path))
    # read from the file's encoding without `onnx`: the digest older kface computed through it
    assert emb.weights_digest == hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()
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


@pytest.mark.slow
def test_onnx_optimized_graph_is_cached_checked_and_rebuilt(backbone, faces, reference, tmp_path, monkeypatch):
    """An .onnx file's optimised graph is cached: the second load opens the cached graph (same
    embeddings, fingerprint, metadata); a damaged entry is rebuilt; a changed file gets its own."""
    import os

    import onnxruntime

    monkeypatch.setenv("KFACE_CACHE", str(tmp_path / "cache"))
    opened: list[str] = []
    real = onnxruntime.InferenceSession

    def spy(source, *args, **kwargs):
        opened.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    path = tmp_path / "model.onnx"
    insightface_style_onnx(backbone, path)
    cache = tmp_path / "cache" / "onnx-optimized"
    first = load_embedder(path)
    entries = list(cache.glob("*.onnx"))
    assert opened == [str(path)] and len(entries) == 1 and not list(cache.glob(".*.tmp"))
    again = load_embedder(path)
    assert opened[-1] == str(entries[0])  # the cached graph, not the file
    assert (again.fingerprint, again.metadata) == (first.fingerprint, first.metadata)
    assert np.allclose(again.embed(faces), first.embed(faces), atol=1e-5)
    assert (again.embed(faces) * unit(reference)).sum(axis=1).min() >= 0.9999
    entries[0].write_bytes(b"damaged")
    fixed = load_embedder(path)
    assert opened[-2:] == [str(entries[0]), str(path)]  # tried, refused, rebuilt from the file
    assert np.allclose(fixed.embed(faces), first.embed(faces), atol=1e-5) and entries[0].stat().st_size > 1000
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: a new entry
    load_embedder(path)
    assert opened[-1] == str(path) and len(list(cache.glob("*.onnx"))) == 2
    # a cache that cannot be written only costs the optimisation: the model still opens
    from kface_cli.embedding.embedder import _optimized_path

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    target = _optimized_path(path)
    target.with_name(f".{target.name}.{os.getpid()}.tmp").mkdir()  # ORT cannot write its copy there
    assert np.allclose(load_embedder(path).embed(faces), first.embed(faces), atol=1e-5) and not target.exists()
    monkeypatch.setenv("KFACE_CACHE", str(path))  # a file: no cache folder can be made under it
    assert load_embedder(path).fingerprint == first.fingerprint


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


class _RunsCode:
    """A pickle payload that calls a function when unpickled (what an attacker puts in a .pth)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _malicious_files(root, backbone):
    """A hostile backbone.pth in every place kface reads weights from (run folders included)."""
    import json

    marker = root / "pwned"
    run = root / "runs" / "evil"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB}))
    state = dict(backbone.state_dict())
    state["features.weight"] = _RunsCode(marker)  # code beside a real config.json
    torch.save(state, run / "backbone.pth")
    torch.save({"backbone": state, "format": "kface-checkpoint/1"}, run / "checkpoint.pt")
    bare = root / "bare.pth"
    torch.save(_RunsCode(marker), bare)
    return marker, [run, run / "backbone.pth", run / "checkpoint.pt", bare]


def test_a_pickle_that_runs_code_is_refused_everywhere(tmp_path, backbone):
    from kface_cli.embedding.loading import load_torch_weights
    from kface_cli.train.loop import _read_init

    marker, paths = _malicious_files(tmp_path, backbone)
    for path in paths:
        with pytest.raises(InputError, match="refused to load"):
            load_embedder(path, backend="torch")
        with pytest.raises(InputError, match="refused to load"):
            load_torch_weights(path)
        with pytest.raises(InputError, match="refused to load"):
            _read_init(str(path))  # kface train --init
        assert not marker.exists(), f"unpickling {path} ran code"


def test_a_malicious_model_via_the_cli_runs_nothing(tmp_path, backbone):
    import cv2
    from typer.testing import CliRunner

    from kface_cli.cli import app

    marker, paths = _malicious_files(tmp_path, backbone)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "alice.png"), np.full((112, 112, 3), 128, np.uint8))
    for path in paths:
        for args in (
            ["export", "--model", str(path), "--out", str(tmp_path / "x.onnx")],
            ["enroll", str(photos), "--aligned", "--model", str(path)],
        ):
            result = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path)])
            assert result.exit_code == 2, result.output
            assert "refused to load" in result.output
            assert not marker.exists()


def test_checkpoints_kface_writes_load_weights_only(workspace):
    emb = load_embedder(workspace / "runs" / "demo" / "checkpoint.pt", backend="torch")
    assert emb.network == NETWORK
