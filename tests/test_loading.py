"""Loading every kind of model file (run folders, checkpoints, backbone.pth, ONNX, TorchScript) safely."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from helpers.models import EMB, NETWORK, insightface_style_onnx, unit

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
    from kface_cli.train.setup import _read_init

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


# -- issue 25: models never run code unasked; fingerprints come from the weights --------------------


def _tiny_torchscript(path):
    """A small TorchScript file (scripting a backbone takes seconds; refusals never load it)."""
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def test_torchscript_runs_only_with_trust_model(tmp_path, monkeypatch):
    from kface_cli import api
    from kface_cli.embedding.loading import load_torch_weights

    path = _tiny_torchscript(tmp_path / "model.pt")
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(InputError, match="--trust-model") as err:
        load_embedder(path)
    assert "TorchScript" in str(err.value)
    with pytest.raises(InputError, match="--trust-model"):
        api.load_model(path)
    with pytest.raises(InputError, match="TorchScript program"):  # weights-only places never run it
        load_torch_weights(path)
    assert not loaded  # refused before torch.jit.load could run anything


@pytest.mark.slow
def test_a_trusted_torchscript_has_the_fingerprint_of_its_weights(tmp_path, backbone):
    from kface_cli import api

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(backbone.eval(), torch.zeros(1, 3, 112, 112), check_trace=False), str(path))
    emb = api.load_model(path, trust_model=True)
    assert emb.fingerprint == embedder_from_module(backbone).fingerprint


def test_a_torchscript_via_the_cli_needs_trust_model(tmp_path):
    import cv2
    from typer.testing import CliRunner

    from kface_cli.cli import app

    path = _tiny_torchscript(tmp_path / "model.pt")
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.full((112, 112, 3), 128, np.uint8))
    (tmp_path / "people").mkdir()
    cv2.imwrite(str(tmp_path / "people" / "ann.png"), np.full((112, 112, 3), 128, np.uint8))
    (tmp_path / "pairs.csv").write_text(f"{photo},{photo},1\n{photo},{photo},0\n")
    from kface_cli.gallery.schema import ModelInfo, Template, content_hash
    from kface_cli.gallery.store import Gallery

    Gallery(tmp_path / "gallery.h5").append(
        [Template("ann", np.ones(2, np.float32) / 2**0.5, "a", content_hash(b"a"))], ModelInfo("f" * 20, 2, "x", "/")
    )
    where = ["--model", str(path), "--workdir", str(tmp_path)]
    for args in (
        ["verify", str(photo), str(photo), "--landmarks", "detect"],
        ["embed", str(photo), "--out", str(tmp_path / "e.npy")],
        ["enroll", str(tmp_path / "people"), "--aligned"],
        ["identify", str(photo), "--aligned"],
        ["evaluate", "--pairs", str(tmp_path / "pairs.csv")],
    ):
        result = CliRunner().invoke(app, [*args, *where])
        assert result.exit_code == 2, (args, result.output)
        assert "--trust-model" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_trusted_torchscript_enrolls_via_the_cli(tmp_path, backbone):
    import cv2
    from typer.testing import CliRunner

    from kface_cli.cli import app

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(backbone.eval(), torch.zeros(1, 3, 112, 112), check_trace=False), str(path))
    (tmp_path / "people").mkdir()
    cv2.imwrite(str(tmp_path / "people" / "ann.png"), np.full((112, 112, 3), 128, np.uint8))
    where = ["--model", str(path), "--workdir", str(tmp_path)]
    trusted = CliRunner().invoke(app, ["enroll", str(tmp_path / "people"), "--aligned", "--trust-model", *where])
    assert trusted.exit_code == 0, trusted.output


def _onnx_with_metadata(module, path, meta):
    import onnx

    insightface_style_onnx(module, path)
    proto = onnx.load(str(path))
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


@pytest.mark.slow
def test_onnx_fingerprint_comes_from_the_weights(tmp_path, backbone, workspace, capsys):
    import onnx

    from kface_cli.embedding.export import export_model
    from kface_cli.gallery.schema import ModelInfo, Template, content_hash
    from kface_cli.gallery.store import Gallery

    out = tmp_path / "model.onnx"
    result = export_model(workspace / "runs" / "demo", out)
    run = load_embedder(workspace / "runs" / "demo", backend="torch")
    assert load_embedder(out).fingerprint == run.fingerprint == result.fingerprint  # an export keeps its run's
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    # other weights under the export's metadata (shuffled or quantised by a tool that keeps metadata)
    shuffled = get_backbone(NETWORK, EMB).eval()
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    key = max((k for k in state if state[k].ndim == 4), key=lambda k: state[k].numel())
    state[key] = (
        state[key]
        .flatten()[torch.randperm(state[key].numel(), generator=torch.Generator().manual_seed(0))]
        .reshape(state[key].shape)
    )
    shuffled.load_state_dict(state)
    _onnx_with_metadata(shuffled, tmp_path / "shuffled.onnx", meta)
    capsys.readouterr()
    other = load_embedder(tmp_path / "shuffled.onnx")
    assert other.fingerprint != run.fingerprint
    assert "not the ones it was exported with" in capsys.readouterr().err
    # an export of an older kface (a claimed digest, not tied to the graph) is not believed either
    old = {k: v for k, v in meta.items() if k != "kface.graph_digest"}
    _onnx_with_metadata(shuffled, tmp_path / "old.onnx", old)
    assert load_embedder(tmp_path / "old.onnx").fingerprint != run.fingerprint
    # a gallery made with the original refuses the impostor
    g = Gallery(tmp_path / "g.h5")
    vec = np.ones(EMB, np.float32) / np.sqrt(EMB)
    g.append([Template("ann", vec, "a.jpg", content_hash(b"a"))], ModelInfo.of(run))
    with pytest.raises(ModelMismatchError):
        g.check_model(ModelInfo.of(other))


@pytest.mark.slow
def test_quantised_export_gets_its_own_fingerprint(tmp_path, workspace):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kface_cli.embedding.export import export_model

    out = tmp_path / "model.onnx"
    export_model(workspace / "runs" / "demo", out)
    quantize_dynamic(str(out), str(tmp_path / "q.onnx"), weight_type=QuantType.QUInt8)
    import onnx

    assert {p.key for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props} >= {"kface.weights_digest"}
    assert load_embedder(tmp_path / "q.onnx").fingerprint != load_embedder(out).fingerprint


def _tiny_onnx(path, *, in_type=None, out_rank=2, out_value=None, meta=None):
    """A small ONNX model of any input type and output rank (made with the onnx helper)."""
    import onnx
    from onnx import TensorProto, helper

    in_type = in_type or TensorProto.FLOAT
    x = helper.make_tensor_value_info("data", in_type, ["N", 3, 112, 112])
    nodes = [helper.make_node("Cast", ["data"], ["xf"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("ReduceMean", ["xf"], ["m"], axes=[2, 3], keepdims=0))  # (N, 3)
    if out_value is not None:  # a constant output: m * 0 + value
        nodes.append(
            helper.make_node("Constant", [], ["z"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]))
        )
        nodes.append(
            helper.make_node("Constant", [], ["v"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [out_value]))
        )
        nodes.append(helper.make_node("Mul", ["m", "z"], ["mz"]))
        nodes.append(helper.make_node("Add", ["mz", "v"], ["y2"]))
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["y2"]))
    shapes = {1: ["N"], 2: ["N", 3], 3: ["N", 3, 1]}
    if out_rank == 1:
        nodes.append(helper.make_node("ReduceMean", ["y2"], ["y"], axes=[1], keepdims=0))
    elif out_rank == 3:
        nodes.append(helper.make_node("Unsqueeze", ["y2", "ax"], ["y"]))
        nodes.insert(
            0, helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("ax", TensorProto.INT64, [1], [2]))
        )
    else:
        nodes.append(helper.make_node("Identity", ["y2"], ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes[out_rank])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return path


def test_odd_onnx_models_are_one_line(tmp_path, faces):
    from onnx import TensorProto

    for kwargs, words in [
        ({"in_type": TensorProto.FLOAT16}, "tensor(float16) input"),
        ({"in_type": TensorProto.UINT8}, "tensor(uint8) input"),
        ({"out_rank": 1}, "rank 1"),
        ({"out_rank": 3}, "rank 3"),
        ({"meta": {"kface.embedding_size": "abc"}}, "kface.embedding_size='abc'"),
        ({"meta": {"kface.embedding_size": "512"}}, "kface.embedding_size='512'"),
    ]:
        path = _tiny_onnx(tmp_path / "m.onnx", **kwargs)
        with pytest.raises(KFaceError, match=re.escape(words)):
            load_embedder(path)
    assert load_embedder(_tiny_onnx(tmp_path / "ok.onnx")).embedding_size == 3


def test_nan_and_zero_embeddings_are_refused(tmp_path, faces):
    for value, words in [
        (0.0, "zero embeddings"),
        (float("nan"), "NaN or infinite"),
        (float("inf"), "NaN or infinite"),
    ]:
        emb = load_embedder(_tiny_onnx(tmp_path / "m.onnx", out_value=value))
        with pytest.raises(InputError, match=words):
            emb.embed(faces)
        with pytest.raises(InputError, match=words):
            load_embedder(tmp_path / "m.onnx", flip=True).embed(faces)


def test_allocation_failure_at_run_time_is_one_line(tmp_path, faces):
    emb = load_embedder(_tiny_onnx(tmp_path / "m.onnx"))

    class Session:
        def run(self, *_a, **_k):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation")

        def get_inputs(self):
            return [type("I", (), {"name": "data"})]

        get_outputs = get_inputs

    from kface_cli.embedding.embedder import ort_forward

    emb._forward = ort_forward(Session(), "ONNX model m.onnx")
    with pytest.raises(KFaceError, match="out of memory while running ONNX model m.onnx"):
        emb.embed(faces)

    def oom(_x):
        raise MemoryError

    emb._forward = ort_forward(type("S", (Session,), {"run": lambda *a, **k: oom(None)})(), "m")
    with pytest.raises(KFaceError, match="out of memory"):
        emb.embed(faces)


@pytest.mark.slow
def test_torch_models_run_when_the_onnx_cache_cannot_be_written(workspace, faces, monkeypatch):
    import errno

    from kface_cli import atomic

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    monkeypatch.setenv("KFACE_CACHE", str(workspace / "unwritable-cache"))
    emb = load_embedder(workspace / "runs" / "demo", backend="onnx")
    assert emb.backend == "onnx" and emb.embed(faces).shape == (5, EMB)
    monkeypatch.setattr(
        atomic.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    assert load_embedder(workspace / "runs" / "demo", backend="onnx").embed(faces).shape == (5, EMB)


@pytest.mark.slow
def test_a_damaged_onnx_cache_file_is_exported_again(workspace, faces, monkeypatch, tmp_path):
    monkeypatch.setenv("KFACE_CACHE", str(tmp_path / "cache"))
    first = load_embedder(workspace / "runs" / "demo", backend="onnx")
    (cached,) = (tmp_path / "cache" / "onnx").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    again = load_embedder(workspace / "runs" / "demo", backend="onnx")
    assert np.allclose(again.embed(faces), first.embed(faces), atol=1e-5)


def test_a_truncated_checkpoint_is_called_damaged(workspace, tmp_path):
    data = (workspace / "runs" / "demo" / "checkpoint.pt").read_bytes()
    for cut in (len(data) // 2, 100):
        (tmp_path / "checkpoint.pt").write_bytes(data[:cut])
        with pytest.raises(InputError, match="damaged") as err:
            load_embedder(tmp_path / "checkpoint.pt", network=NETWORK)
        assert "run code" not in str(err.value)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('{"network": ["mbf"], "embedding_size": 32}', "'network' must be a backbone name"),
        ('{"network": "mbf_small", "embedding_size": "abc"}', "'embedding_size' must be a whole number"),
        ('{"network": "mbf_small", "embedding_size": 1e12}', "'embedding_size' must be a whole number"),
        ("[" * 100000 + "]" * 100000, "cannot parse"),
        ("[1, 2]", "not a run's config"),
    ],
)
def test_odd_run_configs_are_one_line_naming_the_file(workspace, tmp_path, config, words):
    import shutil

    run = tmp_path / "runs" / "odd"
    shutil.copytree(workspace / "runs" / "demo", run)
    (run / "config.json").write_text(config)
    with pytest.raises(InputError, match=re.escape(words)) as err:
        load_embedder(run, backend="torch")
    assert "config.json" in str(err.value)


def test_onnx_weights_in_external_files_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("Add", ["m", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "inside.onnx"))
    assert load_embedder(tmp_path / "inside.onnx").embedding_size == 3
    onnx.save(model, str(tmp_path / "outside.onnx"), save_as_external_data=True, size_threshold=0, location="w.bin")
    with pytest.raises(InputError, match="keeps weights in external data files"):
        load_embedder(tmp_path / "outside.onnx")
