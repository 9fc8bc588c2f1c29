"""Loading every kind of face model: the one place kface reads model files (the only ``torch.load``).

::

    emb = load_embedder("runs/r50")            # our run folder (config.json + backbone.pth)
    emb = load_embedder("runs/r50/checkpoint.pt")
    emb = load_embedder("backbone.pth", network="r100")   # insightface model-zoo weights
    emb = load_embedder("w600k_r50.onnx")      # insightface's ONNX models, or ours (kface export)
    emb = load_embedder("model.pt", trust_model=True)  # TorchScript runs code: only when trusted

:func:`load_torch_weights` + :func:`build_backbone` give the torch module itself (``kface export``,
``kface train --init``); :func:`load_torch_backbone` refuses exports (``kface invert``), and
:func:`load_run_checkpoint` adds the margin head (``kface clean``).

Security: every model file is untrusted (docs/security.md). torch files are read with
``weights_only=True`` only (a pickle that names any code is refused, wherever the file lies, run
folder or not); ONNX files run on ONNX Runtime, which executes no Python. TorchScript is a program
(it can map and write any file), so it runs only with ``trust_model=True`` (``--trust-model``).
Fingerprints are computed from the weights on every load; metadata only ever carries a copy.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.atomic import special_file_kind
from kface_cli.defaults import FACE_SIZE
from kface_cli.embedding.embedder import (
    META_WEIGHTS_DIGEST,
    Backend,
    Embedder,
    check_backend,
    embedder_from_module,
    module_output_size,
    onnx_digest,
    ort_forward,
    ort_session,
    state_dict_digest,
    torch_forward,
)
from kface_cli.errors import InputError, KFaceError, ModelMismatchError
from kface_cli.workspace import RUN_BACKBONE, RUN_CHECKPOINT, RUN_CONFIG

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: The largest embedding size kface accepts from a model's metadata or output (ArcFace: 128-512).
MAX_EMBEDDING_SIZE = 65536
#: What ``--trust-model`` means, for the refusal line and the docs.
TRUST_HINT = (
    "Pass --trust-model (api.load_model(..., trust_model=True)) only for a file you would run as a program; "
    "otherwise export the run to ONNX (`kface export`), which runs no code"
)


def _load_onnx(path: Path, flip: bool) -> Embedder:
    # ONNX Runtime reads the file, its metadata and input shapes: no `onnx` import (over a second)
    try:
        session = ort_session(path)
    except MemoryError:
        raise KFaceError(f"out of memory while loading ONNX model {path}") from None
    except Exception as e:  # ORT's InvalidProtobuf, Fail, NoSuchFile...
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot load ONNX model {path}: {detail}",
            hint="Check that the file is a complete .onnx model (re-export it with `kface export`, or re-download it).",
        ) from None
    metadata = {str(k): str(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    inputs = session.get_inputs()  # initializers are not inputs here
    if len(inputs) != 1:
        raise ModelMismatchError(
            f"{path.name} has {len(inputs)} inputs; a face embedding model has one ([N, 3, 112, 112])", path=path
        )
    dims = [d if isinstance(d, int) else None for d in inputs[0].shape]  # symbolic dims are names
    if (
        len(dims) != 4
        or dims[1] not in (3, None)
        or dims[2] not in (FACE_SIZE, None)
        or dims[3] not in (FACE_SIZE, None)
    ):
        raise ModelMismatchError(
            f"{path.name} takes input of shape {dims}; kface needs [N, 3, {FACE_SIZE}, {FACE_SIZE}] (ArcFace-aligned faces)",
            path=path,
        )
    if inputs[0].type != "tensor(float)":
        raise ModelMismatchError(
            f"{path.name} takes {inputs[0].type} input; kface feeds float32 faces (tensor(float))",
            hint="Use a float32-input model (quantised or fp16 models need a float32 input and output, as onnxruntime's quantize_dynamic makes).",
            path=path,
        )
    outputs = session.get_outputs()
    out_shape = list(outputs[0].shape) if outputs and outputs[0].shape is not None else []
    if len(out_shape) != 2 or outputs[0].type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise ModelMismatchError(
            f"{path.name} returns {outputs[0].type if outputs else 'nothing'} of rank {len(out_shape)} "
            f"(shape {out_shape}); a face embedding model returns float [N, D]",
            path=path,
        )
    digest, note = onnx_digest(path, metadata)
    if note:
        from kface_cli.console import warn

        warn(note)
    static = out_shape[-1] if isinstance(out_shape[-1], int) and out_shape[-1] > 0 else None
    forward = ort_forward(session, f"ONNX model {path}")
    size = static
    if size is None:
        size = int(forward(np.zeros((1, 3, FACE_SIZE, FACE_SIZE), np.float32)).shape[-1])
    if not 1 <= size <= MAX_EMBEDDING_SIZE:
        raise ModelMismatchError(f"{path.name} returns embeddings of size {size}", path=path)
    claimed = metadata.get("kface.embedding_size")
    if claimed is not None and claimed.strip() != str(size):
        raise ModelMismatchError(
            f"{path.name}: its metadata says kface.embedding_size={claimed[:40]!r}, but it returns embeddings of size {size}",
            hint="The file was edited after export; re-export it with `kface export`.",
            path=path,
        )
    network = metadata.get("kface.network") or "onnx"
    return Embedder(
        forward,
        network=network[:64],
        embedding_size=size,
        weights_digest=digest,
        flip=flip,
        backend="onnx",
        source=path,
        metadata=metadata,
    )


# ------------------------------------------------------------------------------------------
# torch weights: run folders, checkpoints, bare backbone.pth, TorchScript
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchWeights:
    """A backbone state_dict and what we know about it."""

    state_dict: dict[str, Any]
    network: str | None
    embedding_size: int | None
    source: Path


def torch_load(path: Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``: tensors and plain containers, never code.

    A file whose pickle names anything else (``os.system``, a class, a lambda) is refused with one
    line, whoever wrote it and wherever it lies: run folders get no exception.
    """
    import pickle

    import torch

    if is_torchscript(path):
        raise InputError(
            f"refused to load {path} as weights: it is a TorchScript program (it runs its own code)",
            hint="kface reads weights from state_dicts (backbone.pth, checkpoint.pt) here; "
            "a TorchScript model can only be used where --trust-model is offered (enroll, identify, verify, embed, evaluate).",
        )
    damaged = _damaged_zip(path)
    if damaged:
        raise InputError(
            f"cannot read {path}: the file is damaged or truncated ({damaged})",
            hint="Copy it again from where it came from, or use another checkpoint (e.g. backbone.pth of the run).",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # torch names the first global it would not import
        if not found and _looks_truncated(e):
            raise _truncated(path, e) from None
        what = f"its pickle calls {found.group(1)}" if found else "it holds more than tensors"
        raise InputError(
            f"refused to load {path}: it is not a plain weights file ({what})",
            hint="kface only reads tensors (state_dicts such as insightface's backbone.pth, kface checkpoints); "
            "files that would run code when unpickled are never loaded. Export the model's state_dict, or use ONNX.",
        ) from None
    except MemoryError:
        raise KFaceError(
            f"out of memory while reading {path}", hint="The file is too large for this machine."
        ) from None
    except (RuntimeError, AttributeError, TypeError, ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise _truncated(path, e) from None


def _looks_truncated(e: BaseException) -> bool:
    text = str(e).lower()
    return any(
        w in text
        for w in ("truncat", "eof", "ran out of input", "unexpected end", "central directory", "failed reading")
    )


def _truncated(path: Path, e: BaseException) -> InputError:
    detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return InputError(
        f"cannot read {path}: the file is damaged, truncated or not a torch weights file ({detail})",
        hint="Copy it again from where it came from, or pass another model file.",
    )


def _damaged_zip(path: Path) -> str | None:
    """Why a file that starts as a zip archive (torch's format since 1.6) is not a complete one, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":
            return None
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        return str(e)[:160] or type(e).__name__
    return None


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove DDP/compile wrappers' key prefixes ("module.", "_orig_mod.")."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


#: A run's config.json larger than this is not one kface wrote (they are about 2 kB).
MAX_CONFIG_BYTES = 1 << 20


def _read_run_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / RUN_CONFIG
    if not cfg_path.is_file():
        return {}
    hint = "The run's config.json is damaged; pass --network with the backbone.pth instead."
    try:
        if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"{cfg_path} is {cfg_path.stat().st_size:,} bytes: not a run's config.json", hint=hint)
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as e:
        raise InputError(f"cannot parse {cfg_path}: {str(e)[:160] or type(e).__name__}", hint=hint) from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path} is not a run's config (a JSON object)", hint=hint)
    return {**cfg, "__path__": str(cfg_path)}


def _config_network(cfg: Any, depth: int = 0) -> tuple[str | None, int | None]:
    if not isinstance(cfg, dict) or depth > 2:
        return None, None
    if isinstance(cfg.get("model"), dict):  # nested config layouts
        n, e = _config_network(cfg["model"], depth + 1)
        if n:
            return n, e
    where = cfg.get("__path__") or "the run's config"
    network = cfg.get("network") or cfg.get("backbone_name")
    size = cfg.get("embedding_size")
    if network is not None and (not isinstance(network, str) or len(network) > 64):
        raise InputError(
            f"{where}: 'network' must be a backbone name, got {str(network)[:40]!r}",
            hint="Fix the run's config.json, or pass --network with the backbone.pth.",
        )
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_EMBEDDING_SIZE
    ):
        if size == 0:  # "auto" in some configs
            size = None
        else:
            raise InputError(
                f"{where}: 'embedding_size' must be a whole number from 1 to {MAX_EMBEDDING_SIZE}, got {str(size)[:40]!r}",
                hint="Fix the run's config.json, or pass --network with the backbone.pth.",
            )
    return (network or None), size


def _weights_from_state(obj: Any, path: Path, cfg: dict[str, Any]) -> TorchWeights:
    import torch

    network, size = _config_network(cfg)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "backbone" in obj and isinstance(obj["backbone"], dict):
        inner = obj.get("config")
        n2, s2 = _config_network({**inner, "__path__": str(path)} if isinstance(inner, dict) else None)
        network, size = network or n2, size or s2
        obj = obj["backbone"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(
            f"{path} holds no backbone weights",
            hint="Expected a state_dict (insightface backbone.pth), a kface checkpoint.pt (with 'backbone') or a run folder.",
        )
    return TorchWeights(strip_prefixes(obj), network, size, path)


def resolve_model_path(model: str | Path | None, workdir: Path | None) -> Path:
    from kface_cli.workspace import Workspace

    ws = Workspace.resolve(workdir)
    if model is None:
        run = ws.latest_run()
        if run is None:
            raise InputError(
                f"no trained model in workspace {ws.root} (no runs/<name>/backbone.pth)",
                hint="Run `kface train` first, or pass a model with --model (run folder, checkpoint.pt, backbone.pth or .onnx).",
            )
        return run
    path = Path(model).expanduser()
    if path.exists():
        kind = special_file_kind(path.stat().st_mode)
        if kind is not None and kind != "a folder":  # a FIFO named model.onnx would block forever
            raise InputError(f"{path} is {kind}, not a model file", hint="Pass a regular file or a run folder.")
        return path
    if not path.is_absolute() and len(path.parts) == 1:
        from kface_cli.hub.cache import resolve_pack

        run = ws.run(str(model))
        pack = resolve_pack(str(model))  # a pack fetched with `kface models get`
        if run.exists() and pack is not None:
            raise InputError(
                f"{model!r} is both a run ({run}) and a fetched model pack ({pack.parent})",
                hint=f"Pass the path of the one you mean: {run} or {pack}.",
            )
        if run.exists():
            return run  # a run name: runs/<name>
        if pack is not None:
            return pack
    raise InputError(
        f"model not found: {model}",
        hint=f"Pass a run folder, a run name under {ws.runs}, a fetched pack's name (`kface models list`), "
        "a checkpoint.pt, a backbone.pth or an .onnx file.",
    )


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a program: ``torch.jit.load`` runs its code)."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def load_torch_weights(path: Path) -> TorchWeights:
    if path.is_dir():
        cfg = _read_run_config(path)
        for name in (RUN_BACKBONE, RUN_CHECKPOINT):
            if (path / name).is_file():
                return _weights_from_state(torch_load(path / name), path, cfg)
        raise InputError(
            f"{path} is not a run folder: it has no {RUN_BACKBONE} or {RUN_CHECKPOINT}",
            hint="Pass a folder made by `kface train`, or a model file.",
        )
    cfg = _read_run_config(path.parent)  # backbone.pth / checkpoint.pt inside a run folder
    return _weights_from_state(torch_load(path), path, cfg)


@dataclass(frozen=True)
class RunCheckpoint:
    """A kface training checkpoint: the backbone and the margin head of the same step."""

    weights: TorchWeights
    head: dict[str, Any]  # the head's full state_dict ("weight": (C*K, D) class centres)
    config: dict[str, Any]  # the run's training config
    num_classes: int
    source: Path


def load_run_checkpoint(model: str | Path | None, workdir: Path | None = None) -> RunCheckpoint:
    """The backbone and head of a training run (``checkpoint.pt``; a run folder or name works too).

    ``backbone.pth`` holds the best epoch's backbone only; analyses of the class centres
    (``kface clean``) need the backbone the centres were trained with, which is the checkpoint's.
    """
    path = resolve_model_path(model, workdir)
    file = path / RUN_CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise InputError(
            f"{path} has no {RUN_CHECKPOINT}", hint="Pass a run folder made by `kface train`, or its checkpoint.pt."
        )
    obj = torch_load(file)
    if not isinstance(obj, dict) or not isinstance(obj.get("head"), dict) or "num_classes" not in obj:
        raise InputError(
            f"{file} is not a kface training checkpoint (no margin head in it)",
            hint="Pass a run folder made by `kface train`, or its checkpoint.pt (not backbone.pth or ONNX).",
        )
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    weights = _weights_from_state(obj, file, _read_run_config(file.parent))
    return RunCheckpoint(weights, obj["head"], config, int(obj["num_classes"]), file)


def load_torch_backbone(
    model: str | Path | None, *, workdir: Path | None = None, network: str | None = None, purpose: str
) -> tuple[torch.nn.Module, str, int, Path]:
    """A torch backbone (module, network, D, source) for work that needs gradients (``kface invert``).

    ONNX and TorchScript exports are refused with one line naming ``purpose``.
    """
    path = resolve_model_path(model, workdir)
    if path.is_file() and (path.suffix.lower() == ".onnx" or is_torchscript(path)):
        raise InputError(
            f"{purpose} needs the torch weights, and {path.name} is an exported model",
            hint="Pass the run folder, its checkpoint.pt or a backbone.pth (exports carry no gradients here).",
        )
    module, name, size = build_backbone(load_torch_weights(path), network)
    return module.float().eval(), name, size, path


def _embedding_size_or_none(state_dict: dict[str, Any]) -> int | None:
    from kface_cli.models import registry

    try:
        return registry.infer_embedding_size(state_dict)
    except KFaceError:
        return None


def build_backbone(weights: TorchWeights, network: str | None = None) -> tuple[torch.nn.Module, str, int]:
    """Instantiate the backbone for ``weights`` and load them strictly. Returns (module, network, D)."""
    from kface_cli.models import registry

    network = network or weights.network
    if not network:
        try:
            network = registry.infer_network(weights.state_dict)
        except KFaceError as e:
            raise ModelMismatchError(
                f"cannot tell which backbone {weights.source.name} is: {e.message}",
                hint=f"{e.hint + ' ' if e.hint else ''}Pass --network ({', '.join(registry.list_backbones())}).",
                path=weights.source,
            ) from None
    size = weights.embedding_size or _embedding_size_or_none(weights.state_dict) or registry.DEFAULT_EMBEDDING_SIZE
    module = registry.get_backbone(network, size)  # unknown name -> KFaceError listing the names
    missing, unexpected, bad_shapes = _compare_keys(module.state_dict(), weights.state_dict)
    if missing or unexpected or bad_shapes:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})" if missing else "",
                f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                f"{len(bad_shapes)} shape mismatches (e.g. {bad_shapes[0]})" if bad_shapes else "",
            )
            if part
        )
        raise ModelMismatchError(
            f"{weights.source.name} does not fit backbone {network!r} (embedding size {size}): {detail}",
            hint="Pass the right --network (the model's architecture, e.g. r50 for insightface's ms1mv3_arcface_r50).",
            path=weights.source,
        )
    module.load_state_dict(weights.state_dict, strict=True)
    module.eval()
    return module, registry.canonical_name(network), size


def _compare_keys(expected: dict[str, Any], given: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    bad = [
        f"{k}: model {tuple(expected[k].shape)} vs file {tuple(given[k].shape)}"
        for k in expected
        if k in given and tuple(expected[k].shape) != tuple(given[k].shape)
    ]
    return missing, unexpected, bad


def _load_torchscript(path: Path, flip: bool, trust_model: bool) -> Embedder:
    if not trust_model:
        raise InputError(
            f"refused to run {path}: it is a TorchScript model, a program that can read and write any file when it runs",
            hint=TRUST_HINT + ".",
        )
    import torch

    extra = {"kface.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except MemoryError:
        raise KFaceError(f"out of memory while loading {path}") from None
    except Exception as e:  # a damaged archive
        raise _truncated(path, e) from None
    try:
        meta = json.loads(extra["kface.json"]) if extra["kface.json"] else {}
    except (ValueError, RecursionError):
        meta = {}
    meta = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    digest = state_dict_digest(module.state_dict())  # the weights, not what the metadata says
    claimed = meta.get(META_WEIGHTS_DIGEST)
    if claimed and claimed != digest:
        from kface_cli.console import warn

        warn(
            f"{path.name}: its weights are not the ones it was exported with (its metadata names others): "
            "its fingerprint is that of its own weights"
        )
    size = module_output_size(module)
    return Embedder(
        torch_forward(module),
        network=meta.get("kface.network", "torchscript")[:64],
        embedding_size=size,
        weights_digest=digest,
        flip=flip,
        backend="torch",
        source=path,
        metadata=meta,
    )


def load_embedder(
    model: str | Path | None = None,
    *,
    workdir: Path | None = None,
    network: str | None = None,
    flip: bool = False,
    backend: Backend | str = Backend.AUTO,
    trust_model: bool = False,
) -> Embedder:
    """Load any supported face model as an :class:`Embedder`.

    Args:
        model: a run folder (``runs/<name>``) or run name, a ``checkpoint.pt``, a bare insightface
            ``backbone.pth``, a TorchScript file from ``kface export --format torchscript``, or an
            ``.onnx`` file (ours or insightface's, e.g. ``w600k_r50.onnx``). None: the workspace's
            latest run.
        workdir: workspace used to find the latest run / run names.
        network: backbone name for a bare ``backbone.pth`` (r18, r34, r50, r100, r200, mbf);
            read from the run's config.json when there is one, else inferred from the weights.
        flip: flip test-time augmentation (about +0.1-0.3% verification accuracy, 2x the compute).
        backend: "torch", "onnx" (ONNX Runtime) or "auto" (the faster one; ONNX on CPU).
        trust_model: run a TorchScript model. TorchScript is a program (it can read and write any
            file), so it is refused unless the user opts in (``--trust-model``); state_dicts and
            ONNX files run no code and need no trust.
    """
    backend = check_backend(backend)
    path = resolve_model_path(model, workdir)
    if path.is_file() and path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise KFaceError(
                f"{path.name} is an ONNX model; it runs on ONNX Runtime only", hint="Use backend 'onnx' or 'auto'."
            )
        return _load_onnx(path, flip)
    if path.is_file() and is_torchscript(path):
        return _load_torchscript(path, flip, trust_model)
    weights = load_torch_weights(path)
    import torch

    module, name, size = build_backbone(weights, network)
    if backend != "onnx" and torch.cuda.is_available():
        module = module.cuda()  # "auto" then stays on torch (see _auto_onnx_for)
    channels_last = next(module.parameters()).device.type == "cpu"
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return embedder_from_module(
        module,
        flip=flip,
        network=name,
        backend=backend,
        source=path,
        embedding_size=size,
        cache_onnx=True,
        channels_last=channels_last,
    )
