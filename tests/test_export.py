"""kface export: ONNX / TorchScript round trip, metadata, dynamic batch, self-check, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import calibrated
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.embedding import export as export_mod
from kface_cli.embedding.export import export_model, synthetic_faces
from kface_cli.embedding.loading import load_embedder
from kface_cli.errors import InputError, KFaceError
from kface_cli.models.registry import get_backbone

NETWORK, EMB = "mbf_small", 32


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    run = root / "runs" / "tiny"
    run.mkdir(parents=True)
    torch.manual_seed(1)
    net = calibrated(get_backbone(NETWORK, EMB))
    torch.save(net.state_dict(), run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": NETWORK, "embedding_size": EMB, "seed": 1}))
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KFACE_CACHE", str(tmp_path_factory.getbasetemp() / "kface-cache"))


@pytest.mark.slow
def test_onnx_export_round_trip(workspace, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    result = export_model(workspace / "runs" / "tiny", out, opset=17)
    assert out.is_file() and result.size_bytes == out.stat().st_size
    assert result.min_cosine >= 0.9999 and result.network == NETWORK and result.embedding_size == EMB
    proto = onnx.load(str(out))
    (inp,) = proto.graph.input
    assert inp.name == "data"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert proto.opset_import[0].version == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["kface.network"] == NETWORK and meta["kface.embedding_size"] == str(EMB)
    assert meta["kface.training_run"] == "tiny" and meta["kface.fingerprint"] == result.fingerprint
    assert json.loads(meta["kface.alignment_template"])[0] == pytest.approx([38.2946, 51.6963])
    assert "127.5" in meta["kface.input"]
    # same fingerprint and embeddings as the run it came from, at any batch size
    run_emb = load_embedder(workspace / "runs" / "tiny", backend="torch")
    onnx_emb = load_embedder(out)
    assert onnx_emb.fingerprint == run_emb.fingerprint and onnx_emb.network == NETWORK
    faces = synthetic_faces(5, seed=9)
    cos = (onnx_emb.embed(faces, batch_size=3) * run_emb.embed(faces)).sum(axis=1)
    assert cos.min() >= 0.9999
    # insightface-style use: raw ORT on our preprocessing
    import onnxruntime as ort

    from kface_cli.face.preprocess import faces_to_input

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    raw = sess.run(None, {"data": faces_to_input(faces)})[0]
    assert raw.shape == (5, EMB)


@pytest.mark.slow
def test_torchscript_export(workspace, tmp_path):
    out = tmp_path / "model.pt"
    result = export_model("tiny", out, fmt="torchscript", workdir=workspace)
    assert result.min_cosine >= 0.9999 and result.opset is None
    with pytest.raises(InputError, match="--trust-model"):  # a TorchScript file is a program
        load_embedder(out)
    emb = load_embedder(out, trust_model=True)
    assert emb.network == NETWORK and emb.fingerprint == result.fingerprint


@pytest.mark.slow
def test_failed_self_check_writes_nothing(workspace, tmp_path, monkeypatch):
    real_write = export_mod._write_onnx

    def corrupt(module, path, opset, meta):
        broken = calibrated(get_backbone(NETWORK, EMB))  # other (random) weights, same metadata
        real_write(broken, path, opset, meta)

    monkeypatch.setattr(export_mod, "_write_onnx", corrupt)
    out = tmp_path / "bad.onnx"
    with pytest.raises(KFaceError, match="self-check failed"):
        export_model(workspace / "runs" / "tiny", out)
    assert list(tmp_path.iterdir()) == []


def test_export_errors(workspace, tmp_path):
    with pytest.raises(KFaceError, match="written as .onnx"):
        export_model(workspace / "runs" / "tiny", tmp_path / "model.bin")
    with pytest.raises(KFaceError, match="onnx, torchscript"):
        export_model(workspace / "runs" / "tiny", tmp_path / "m.onnx", fmt="tflite")  # type: ignore[arg-type]
    with pytest.raises(KFaceError, match="no trained model"):
        export_model(None, tmp_path / "m.onnx", workdir=tmp_path)


def test_export_never_writes_over_a_checkpoint_or_a_gallery(workspace, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"backbone": {"w": torch.zeros(2)}}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(InputError, match="checkpoint.pt is a model; refusing to overwrite it"):
        export_model(workspace / "runs" / "tiny", ckpt, fmt="torchscript")
    assert ckpt.read_bytes() == before
    import os

    os.link(workspace / "runs" / "tiny" / "backbone.pth", tmp_path / "same.onnx")  # a hard link to the source
    with pytest.raises(InputError, match="also an input"):
        export_model(workspace / "runs" / "tiny", tmp_path / "same.onnx")


@pytest.mark.slow
def test_cli_export(workspace, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    r = runner.invoke(app, ["export", "--model", "tiny", "--out", str(out), "-w", str(workspace), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["check"]["passed"] and data["check"]["min_cosine"] >= 0.9999 and Path(data["path"]) == out
    r = runner.invoke(app, ["export", "-m", "missing-run", "-w", str(workspace)])
    assert r.exit_code == 2 and "model not found" in r.output
    r = runner.invoke(app, ["export", "missing-run", "-w", str(workspace)])  # the deprecated positional MODEL
    assert r.exit_code == 2 and "deprecated" in r.output and "model not found" in r.output
