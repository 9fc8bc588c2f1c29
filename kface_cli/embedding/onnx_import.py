"""ONNX -> kface backbone weights, exactly or not at all (``kface train --init model.onnx`` or a pack's name).

Training needs torch weights; a pack holds ONNX. When the ONNX graph is a kface backbone (a kface
export, or insightface's ONNX export of the same iresnet / MobileFaceNet), its weights are mapped
back, layer by layer in the order the network runs them:

* ``Conv`` -> ``Conv2d`` (same shape, stride, padding, groups). A convolution whose BatchNorm was
  folded into it by the exporter (a Conv with a bias where kface has Conv + BatchNorm) gives the
  BatchNorm the identity statistics and the folded bias: the same function in eval mode.
* ``BatchNormalization`` -> ``BatchNorm2d/1d`` (epsilon carried over), ``PRelu`` -> ``PReLU``,
  ``Gemm``/``MatMul`` (+ bias) -> ``Linear``.

Every parameter-carrying node must be used, and every kface parameter filled. The result is then
checked, not trusted: the torch backbone and ONNX Runtime must give embeddings within
:data:`MAX_COSINE_GAP` of each other (cosine) on a few faces; otherwise :class:`NotMappable` says so
in one line. BatchNorm running statistics carry what the export fused, so fine-tuning starts from the
same function, not from insightface's original BatchNorm split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import ModelMismatchError
from kface_cli.hub.signature import MAX_EMBEDDING, MIN_EMBEDDING

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.embedding.loading import TorchWeights

#: Largest 1 - cosine between the ONNX model's embeddings and the mapped backbone's.
MAX_COSINE_GAP = 1e-4
CHECK_FACES = 4
_PARAM_OPS = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")


class NotMappable(ModelMismatchError):
    """The ONNX model's weights cannot be mapped exactly onto any kface backbone."""


def _values(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _param_nodes(graph: Any, values: dict[str, np.ndarray]) -> list[tuple[Any, dict[str, Any]]]:
    """The nodes that carry weights, in graph order; a MatMul takes the Add (bias) after it."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for node in graph.node:
        if node.op_type not in _PARAM_OPS:
            continue
        if node.op_type == "MatMul":
            if node.input[1] not in values:
                continue  # a MatMul of two activations carries no weights
            nxt = consumers.get(node.output[0], [])
            bias = None
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                other = [i for i in nxt[0].input if i != node.output[0]]
                bias = values.get(other[0]) if other else None
            out.append((node, {"bias": bias}))
        else:
            out.append((node, {}))
    return out


def _leaf_order(module: Any) -> list[Any]:
    """The backbone's parameter-carrying layers in the order a forward pass runs them."""
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.modules.batchnorm._BatchNorm, torch.nn.PReLU, torch.nn.Linear)
    order: list[Any] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in module.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, FACE_SIZE, FACE_SIZE))
    finally:
        for h in hooks:
            h.remove()
    return order


def _map(module: Any, graph: Any) -> str | None:
    """Fill ``module``'s parameters from ``graph``; None on success, else why not."""
    import torch

    values = _values(graph)
    nodes = _param_nodes(graph, values)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    graph_convs = sum(n.op_type == "Conv" for n, _ in nodes)
    if convs != graph_convs:  # cheap: no forward pass through a backbone that cannot fit
        return f"{graph_convs} convolutions in the graph, {convs} in the backbone"
    layers = _leaf_order(module)
    j = 0
    i = 0

    def need(name: str) -> np.ndarray:
        if name not in values:
            raise KeyError(name)
        return values[name]

    def put(param: Any, array: np.ndarray) -> None:
        if tuple(param.shape) != tuple(array.shape):
            if param.numel() != array.size:
                raise ValueError(f"shape {tuple(array.shape)} where kface has {tuple(param.shape)}")
            array = array.reshape(tuple(param.shape))
        param.copy_(torch.from_numpy(np.array(array, dtype=np.float32)))  # a writable copy

    def identity_bn(bn: Any, bias: np.ndarray) -> None:
        bn.weight.fill_(1.0)
        put(bn.bias, bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)

    try:
        with torch.no_grad():
            while i < len(layers):
                layer = layers[i]
                if j >= len(nodes):
                    return f"the graph ends before kface's layer {i} ({type(layer).__name__})"
                node, extra = nodes[j]
                a = _attrs(node)
                if isinstance(layer, torch.nn.Conv2d):
                    if node.op_type != "Conv":
                        return f"node {j} is {node.op_type} where kface has a convolution"
                    if (
                        a.get("group", 1) != layer.groups
                        or list(a.get("strides", [1, 1])) != list(layer.stride)
                        or list(a.get("pads", [0] * 4))[:2] != list(layer.padding)
                    ):
                        return f"convolution {node.name or j} has other strides, padding or groups"
                    put(layer.weight, need(node.input[1]))
                    bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                    if bias is not None and layer.bias is not None:
                        put(layer.bias, bias)
                    elif bias is not None:  # a BatchNorm folded into the convolution
                        nxt = layers[i + 1] if i + 1 < len(layers) else None
                        if not isinstance(nxt, torch.nn.modules.batchnorm._BatchNorm):
                            return f"convolution {node.name or j} has a bias kface's layer has not"
                        identity_bn(nxt, bias)
                        i += 1
                    elif layer.bias is not None:
                        layer.bias.zero_()
                elif isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    if node.op_type != "BatchNormalization":
                        return f"node {j} is {node.op_type} where kface has a BatchNorm"
                    scale, b, mean, var = (need(n) for n in node.input[1:5])
                    put(layer.weight, scale)
                    put(layer.bias, b)
                    put(layer.running_mean, mean)
                    put(layer.running_var, var + float(a.get("epsilon", 1e-5)) - layer.eps)
                elif isinstance(layer, torch.nn.PReLU):
                    if node.op_type != "PRelu":
                        return f"node {j} is {node.op_type} where kface has a PReLU"
                    put(layer.weight, need(node.input[1]))
                elif isinstance(layer, torch.nn.Linear):
                    if node.op_type == "Gemm":
                        w = need(node.input[1])
                        w = w if a.get("transB", 0) else w.T
                        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                            return f"Gemm {node.name or j} scales its inputs"
                        bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                    elif node.op_type == "MatMul":
                        w, bias = need(node.input[1]).T, extra["bias"]
                    else:
                        return f"node {j} is {node.op_type} where kface has a fully connected layer"
                    put(layer.weight, w)
                    if layer.bias is not None:
                        if bias is None:
                            layer.bias.zero_()
                        else:
                            put(layer.bias, bias)
                    elif bias is not None:
                        nxt = layers[i + 1] if i + 1 < len(layers) else None
                        if not isinstance(nxt, torch.nn.modules.batchnorm._BatchNorm):
                            return "the fully connected layer has a bias kface's has not"
                        identity_bn(nxt, bias)
                        i += 1
                i += 1
                j += 1
    except (KeyError, ValueError) as e:
        return f"weights do not fit at node {j}: {e}"
    if j != len(nodes):
        return f"{len(nodes) - j} weight-carrying nodes of the graph are left over"
    return None


def _max_cosine_gap(module: Any, path: Path) -> float:
    import torch

    from kface_cli.embedding.embedder import ort_forward, ort_session
    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.face.preprocess import faces_to_input

    x = faces_to_input(synthetic_faces(CHECK_FACES, seed=7))
    ref = ort_forward(ort_session(path))(x)
    with torch.no_grad():
        got = module.eval()(torch.from_numpy(x)).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    gap = 1.0 - (ref * got).sum(axis=1)
    return float(np.nan_to_num(gap, nan=2.0).max())


def onnx_to_weights(path: str | Path, network: str | None = None) -> TorchWeights:
    """The kface backbone weights equal to the ONNX model at ``path``, or :class:`NotMappable`.

    ``network``: try this backbone only (default: the one in a kface export's metadata, else every
    registered backbone, smallest first).
    """
    import onnx

    from kface_cli.embedding.loading import TorchWeights
    from kface_cli.models import registry

    path = Path(path)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    outputs = proto.graph.output
    dims = [d.dim_value for d in outputs[0].type.tensor_type.shape.dim] if len(outputs) == 1 else []
    size = int(meta.get("kface.embedding_size") or (dims[-1] if dims and dims[-1] else 0)) or None
    if size is None or not MIN_EMBEDDING <= size <= MAX_EMBEDDING:
        raise NotMappable(
            f"{path.name} has no single [N, D] embedding output ({MIN_EMBEDDING} <= D <= {MAX_EMBEDDING}): it is not a face-embedding model",
            hint="For --init, pass a kface run, a backbone.pth (insightface's arcface_torch model zoo) or a face-embedding ONNX.",
            path=path,
        )
    every = sorted(registry.list_backbones(), key=lambda n: (not n.startswith("mbf"), n not in ("r18", "r34"), n))
    candidates = [network] if network else [meta["kface.network"]] if "kface.network" in meta else every  # cheap first
    reasons = []
    for name in candidates:
        module = registry.get_backbone(name, size).float()
        why = _map(module, proto.graph)
        if why is None:
            gap = _max_cosine_gap(module, path)
            if gap <= MAX_COSINE_GAP:
                sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
                return TorchWeights(sd, registry.canonical_name(name), size, path)
            why = f"mapped, but its embeddings differ from the ONNX model's (1 - cosine {gap:.1e} > {MAX_COSINE_GAP:g})"
        reasons.append(f"{name}: {why}")
    raise NotMappable(
        f"the weights of {path.name} cannot be mapped exactly onto a kface backbone ({reasons[0] if len(reasons) == 1 else '; '.join(reasons[:2]) + '...'})",
        hint="For --init, use the backbone.pth of the same network instead (insightface's arcface_torch model zoo, "
        "e.g. a WebFace/Glint360K r50 or r100 backbone.pth, with --network r50/r100); the ONNX model itself "
        "still works for enroll/identify/verify with --model.",
        path=path,
    )
