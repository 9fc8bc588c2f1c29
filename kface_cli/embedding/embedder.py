"""Embedder: aligned 112x112 faces in, L2-normalised embeddings out, whatever the model file.

Build one with :func:`kface_cli.embedding.loading.load_embedder` (any model file) or
:func:`embedder_from_module` (a torch module in memory)::

    vectors = emb.embed(faces_bgr)             # (N, 112, 112, 3) uint8 -> (N, D) float32, unit norm

Every embedder carries a ``fingerprint``: a hash of the weights, the preprocessing spec and the
flip flag. Galleries and calibration files record it, so embeddings of different models (or of
the same model with and without flip test-time augmentation) are never mixed.

Backends. Weights in torch format run on torch (``backend="torch"``), or on ONNX Runtime after an
in-memory ONNX export (``backend="onnx"``); ``.onnx`` files always run on ONNX Runtime. With
``backend="auto"`` (the default) the choice is the one benchmarks/bench_embed.py measured to be
faster on CPU: see :data:`AUTO_PREFERS_ONNX`. On a CUDA machine torch models stay on torch. The
in-memory export takes 1-6 s (mbf-r50), so it is cached on disk per weights digest in
``$KFACE_CACHE`` (default: the user's cache folder, ``~/.cache/kface`` on Linux) under ``onnx/``; later loads are instant.

ONNX Runtime sessions on the CPU: ONNX Runtime optimises a model's graph each time it opens it
(0.30 s of 0.43 s for MobileFaceNet on the shared 2-core machine); the optimised graph is cached
under ``onnx-optimized/``, keyed by the model file (path, size, modification time), the ONNX
Runtime version and the CPU, and later opens load it without optimising again (0.13 s).
"""

from __future__ import annotations

import copy
import hashlib
import mmap
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.choices import Backend
from kface_cli.defaults import DEFAULT_OPSET, EMBED_BATCH_SIZE, FACE_SIZE
from kface_cli.embedding.onnx_digest import ONNX_GRAPH_FIELD, protobuf_fields
from kface_cli.errors import InputError, KFaceError
from kface_cli.face.preprocess import PREPROCESS_SPEC, faces_to_input
from kface_cli.workspace import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Name of the network input in every ONNX model we write (insightface uses the same).
ONNX_INPUT_NAME = "data"
ONNX_OUTPUT_NAME = "embedding"
#: ONNX metadata key holding the weights digest of the torch model an ONNX file was exported from,
#: so an exported model keeps the fingerprint of its run (its embeddings match to cosine >= 0.9999).
META_WEIGHTS_DIGEST = "kface.weights_digest"
#: ONNX metadata key holding the digest of the graph a kface export was written with: the stored
#: weights digest is believed only while the graph still hashes to it (see :func:`onnx_digest`).
META_GRAPH_DIGEST = "kface.graph_digest"
#: With backend="auto", torch weights run on ONNX Runtime (exported in memory) on CPU.
#: benchmarks/bench_embed.py on a 2-core x86 CPU: ORT is 1.1-8x faster than torch (channels-last,
#: inference mode) at batch 1, and 0.9-2x at batch 32, for mbf, r18 and r50.
AUTO_PREFERS_ONNX = True
#: Number of hex digits in a fingerprint (80 bits: collisions are not a practical concern).
FINGERPRINT_HEX_DIGITS = 20

ForwardFn = Callable[[np.ndarray], np.ndarray]  # (B, 3, 112, 112) float32 -> (B, D) float32


def make_fingerprint(weights_digest: str, flip: bool) -> str:
    """Fingerprint of an embedder: its weights digest + the preprocessing spec + the flip flag."""
    text = f"{weights_digest}|{PREPROCESS_SPEC}|flip={int(bool(flip))}"
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def state_dict_digest(state_dict: dict[str, Any]) -> str:
    """sha256 over the (name, shape, float32 bytes) of every tensor of a state_dict, in key order.

    ``num_batches_tracked`` is skipped (it does not change the function the network computes), and
    tensors are hashed as float32, so the same weights saved in fp16 or loaded on GPU hash alike.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        if name.endswith("num_batches_tracked") or not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def onnx_graph_digest(path: Path) -> str:
    """sha256 of an ONNX file's graph encoding (everything but the model-level metadata).

    Its bytes are read straight from the file's protobuf encoding (the ``onnx`` package takes over
    a second to import): for files written by protobuf, as every ONNX exporter does, they are the
    bytes of ``model.graph.SerializeToString(deterministic=True)``, so fingerprints match older
    kface's. Weights kept in external data files would escape the hash: such models are refused.
    """
    h = hashlib.sha256()
    parts = 0
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            with memoryview(data) as view:
                for part in protobuf_fields(view, ONNX_GRAPH_FIELD):
                    if _has_external_initializer(part):
                        raise InputError(
                            f"{path} keeps weights in external data files, which its fingerprint could not cover",
                            hint="Save it as one file: onnx.save(model, path, save_as_external_data=False).",
                        )
                    h.update(part)
                    parts += 1
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        raise InputError(f"cannot read ONNX model {path}: {e}") from None
    if not parts:
        raise InputError(f"{path} holds no ONNX graph", hint="Check that the file is a complete .onnx model.")
    return h.hexdigest()


def _has_external_initializer(graph: memoryview) -> bool:
    """Whether an encoded GraphProto has an initializer stored outside the file (TensorProto field 13)."""
    for tensor in protobuf_fields(graph, _GRAPH_INITIALIZER_FIELD):
        for _ in protobuf_fields(tensor, _TENSOR_EXTERNAL_DATA_FIELD):
            return True
    return False


#: GraphProto's ``repeated TensorProto initializer = 5``; TensorProto's ``external_data = 13``.
_GRAPH_INITIALIZER_FIELD = 5
_TENSOR_EXTERNAL_DATA_FIELD = 13


def onnx_digest(path: Path, metadata: Mapping[str, str]) -> tuple[str, str | None]:
    """Weights digest of an ONNX file, computed from its weights every time: ``(digest, note)``.

    The graph (nodes, initializers, inputs, outputs) is hashed without the model-level metadata
    (:func:`onnx_graph_digest`), so editing metadata does not change the fingerprint, but changing
    a weight does. Metadata is never the truth: a kface export carries the torch digest of its run
    (:data:`META_WEIGHTS_DIGEST`, so it keeps the run's fingerprint) *together with* the digest of
    the graph it was written with (:data:`META_GRAPH_DIGEST`); the run's digest is used only while
    the graph still hashes to that value. A quantised, converted or re-weighted model that kept
    the metadata gets the fingerprint of its own weights, and ``note`` says why.
    """
    graph = onnx_graph_digest(path)
    claimed, bound = metadata.get(META_WEIGHTS_DIGEST), metadata.get(META_GRAPH_DIGEST)
    if not claimed:
        return graph, None
    if bound == graph:
        return claimed, None
    if bound:
        return graph, (
            f"{path.name}: its weights are not the ones it was exported with (changed, quantised or converted "
            "since; its metadata still names the original): its fingerprint is that of its own weights"
        )
    return graph, (
        f"{path.name} was exported by an older kface whose metadata is not tied to the weights: its fingerprint "
        "is now computed from its weights (re-export it with `kface export` to keep its run's fingerprint)"
    )


class Embedder:
    """Turns aligned faces into unit-length embeddings. Build one with :func:`load_embedder`.

    Attributes:
        source: run folder or model file it was loaded from (None for in-memory modules).
        network: backbone name ("r50", "mbf", ...; "onnx" when an ONNX file does not say).
        embedding_size: D, the length of each embedding.
        fingerprint: stable hex id of (weights, preprocessing, flip); equal fingerprints mean
            interchangeable embeddings.
        flip: flip test-time augmentation on (embedding of the face + of its mirror image).
        backend: "torch" or "onnx" (what actually runs).
    """

    def __init__(
        self,
        forward: ForwardFn,
        *,
        network: str,
        embedding_size: int,
        weights_digest: str,
        flip: bool = False,
        backend: str = "torch",
        source: Path | None = None,
        metadata: dict[str, str] | None = None,
    ):
        self._forward = forward
        self.source = Path(source) if source is not None else None
        self.network = network
        self.embedding_size = int(embedding_size)
        self.flip = bool(flip)
        self.backend = backend
        self.weights_digest = weights_digest
        self.fingerprint = make_fingerprint(weights_digest, self.flip)
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return (
            f"Embedder(network={self.network!r}, embedding_size={self.embedding_size}, flip={self.flip}, "
            f"backend={self.backend!r}, fingerprint={self.fingerprint!r}, source={str(self.source) if self.source else None!r})"
        )

    def with_flip(self, flip: bool) -> Embedder:
        """The same model with flip test-time augmentation on or off (``self`` when it already is).

        Shares the loaded weights; only the flag and the fingerprint differ.
        """
        if bool(flip) == self.flip:
            return self
        twin = copy.copy(self)
        twin.flip = bool(flip)
        twin.fingerprint = make_fingerprint(self.weights_digest, twin.flip)
        return twin

    def describe(self) -> dict[str, Any]:
        """Plain dict for tables, JSON output and gallery/report metadata."""
        return {
            "source": str(self.source) if self.source else None,
            "network": self.network,
            "embedding_size": self.embedding_size,
            "flip": self.flip,
            "backend": self.backend,
            "fingerprint": self.fingerprint,
            "preprocess": PREPROCESS_SPEC,
        }

    def embed(self, faces: np.ndarray, batch_size: int = EMBED_BATCH_SIZE) -> np.ndarray:
        """(N, 112, 112, 3) BGR uint8 aligned faces -> (N, D) float32 unit vectors.

        Faces must be aligned to the ArcFace template (``kface_cli.face.pipeline`` does that).
        A larger ``batch_size`` is faster per image on CPU up to about 32-64; memory grows with it.
        """
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[None]
        if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
            raise InputError(
                f"embed() expects aligned faces of shape (N, {FACE_SIZE}, {FACE_SIZE}, 3), got {faces.shape}",
                hint="Align faces first with kface_cli.face.pipeline (faces_in_image or load_aligned).",
            )
        if faces.dtype != np.uint8:
            raise InputError(
                f"embed() expects uint8 BGR images, got dtype {faces.dtype}",
                hint="Read images with kface_cli.face.imageio.read_image.",
            )
        assert batch_size >= 1, "batch_size must be >= 1"
        n = faces.shape[0]
        out = np.empty((n, self.embedding_size), dtype=np.float32)
        for start in range(0, n, batch_size):
            chunk = faces[start : start + batch_size]
            x = faces_to_input(chunk)  # (B, 3, 112, 112) float32 in [-1, 1]
            if self.flip:
                b = x.shape[0]
                both = self._run(np.concatenate([x, x[:, :, :, ::-1]], axis=0))  # (2B, D)
                self._check(both)
                emb = both[:b] + both[b:]
            else:
                emb = self._run(x)
            self._check(emb)
            out[start : start + chunk.shape[0]] = _l2_normalise(emb)
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        emb = np.asarray(self._forward(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
        if emb.shape != (x.shape[0], self.embedding_size):
            raise InputError(
                f"{self._what()} returned output of shape {emb.shape} for {x.shape[0]} faces; "
                f"a face embedding model returns [N, {self.embedding_size}]",
                hint="Use a face embedding model (ArcFace family: one [N, D] output).",
            )
        return emb

    def _what(self) -> str:
        return f"model {self.source}" if self.source is not None else f"model {self.network}"

    def _check(self, emb: np.ndarray) -> None:
        """Refuse NaN, infinite and zero embeddings: they would match everyone or no one."""
        finite = np.isfinite(emb).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], emb, 0.0), axis=1)
        bad = ~finite | (norms < MIN_EMBEDDING_NORM)
        if bad.any():
            what = "NaN or infinite" if not finite.all() else "zero"
            raise InputError(
                f"{self._what()} returned {what} embeddings for {int(bad.sum())} of {len(emb)} faces: "
                "it is broken (or not a face embedding model); nothing was compared or stored",
                hint="Use another model, or re-export this one from its run folder with `kface export`.",
            )


#: Raw (unnormalised) embeddings shorter than this are refused as zero: ArcFace models give 10-40.
MIN_EMBEDDING_NORM = 1e-6


#: What a deployment function accepts as its model: an embedder, or a function that loads one
#: (called once, when the first face needs it, so a command fails fast on bad input).
EmbedderOrLoader = Embedder | Callable[[], Embedder]


def _l2_normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32)


def out_of_memory(what: str) -> KFaceError:
    """The one line for an allocation that failed while running a model."""
    return KFaceError(
        f"out of memory while running {what}",
        hint="Use a smaller --embed-batch (or --commit-every), or a machine with more memory.",
    )


def _is_allocation_failure(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "alloc" in text or "out of memory" in text


# ------------------------------------------------------------------------------------------
# torch modules
# ------------------------------------------------------------------------------------------


def torch_forward(module: torch.nn.Module, channels_last: bool = False) -> ForwardFn:
    """A forward function that runs ``module`` in eval mode (restoring its mode afterwards).

    ``channels_last``: feed NHWC-strided input (for a module converted with
    ``module.to(memory_format=torch.channels_last)``, 1.1-1.5x faster convolutions on CPU).
    """
    import torch

    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")

    # TorchScript's profiling executor re-specialises the graph on the first calls of every new
    # input shape (seconds each); plain execution is as fast for these conv nets.
    scripted = isinstance(module, torch.jit.ScriptModule)

    def forward(x: np.ndarray) -> np.ndarray:
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode(), torch.jit.optimized_execution(not scripted):
                t = torch.from_numpy(x).to(device)
                if channels_last:
                    t = t.contiguous(memory_format=torch.channels_last)
                return module(t).float().cpu().numpy()
        except (MemoryError, RuntimeError) as e:
            if _is_allocation_failure(e):
                raise out_of_memory(f"the model on {len(x)} faces") from None
            raise
        finally:
            module.train(was_training)

    return forward


def onnx_bytes_from_module(module: torch.nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """Export a torch backbone to ONNX in memory (legacy exporter: one self-contained graph)."""
    import io

    import torch

    was_training = module.training
    module.eval()
    try:
        dummy = torch.zeros(1, 3, FACE_SIZE, FACE_SIZE)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
            # mbf_small compares its input size with a Python int; the input is always 112x112, so
            # the traced constant is right and the tracer's warning is noise for users.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (dummy,),
                buf,
                dynamo=False,  # one self-contained graph, no onnxscript needed
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    return buf.getvalue()


def _cached_onnx_session(module: torch.nn.Module, digest: str) -> Any:
    """An ONNX Runtime session over ``module``, exported once per weights digest and cached on disk.

    Exporting takes 1-6 s (mbf-r50); the cache makes later loads of the same model instant.
    An unwritable cache folder (read-only HOME, full disk) only costs the export time, and a
    cached file that ONNX Runtime cannot load is exported again.
    """
    from kface_cli.atomic import write_bytes

    cached = cache_dir() / "onnx" / f"{digest[:32]}-opset{DEFAULT_OPSET}.onnx"
    try:
        if cached.is_file():
            return ort_session(cached.read_bytes())  # a damaged cache file is exported again, never fatal
    except Exception:  # OSError (unreadable), ORT's errors (a truncated or foreign file)
        pass
    data = onnx_bytes_from_module(module)
    try:
        write_bytes(cached, data)
    except (OSError, KFaceError):  # read-only HOME, full disk: the export in memory still runs
        pass
    return ort_session(data)


def module_output_size(module: torch.nn.Module) -> int:
    import torch

    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            return int(module(torch.zeros(2, 3, FACE_SIZE, FACE_SIZE, device=device)).shape[1])
    finally:
        module.train(was_training)


def embedder_from_module(
    module: torch.nn.Module,
    *,
    flip: bool = False,
    network: str = "in-memory",
    backend: Backend | str = Backend.TORCH,
    source: Path | None = None,
    embedding_size: int | None = None,
    cache_onnx: bool = False,
    channels_last: bool = False,
) -> Embedder:
    """An Embedder over a torch backbone held in memory (train-time validation, tests).

    The module is run in eval mode and put back in its previous mode after each batch, so this is
    safe to call in the middle of training. The fingerprint is a snapshot of the weights at the
    time of the call: build a new embedder after the weights change.
    ``backend="onnx"`` exports the module to ONNX in memory and runs it with ONNX Runtime
    (``cache_onnx=True``: keep the export in :func:`~kface_cli.workspace.cache_dir`, keyed by the weights).
    ``channels_last=True`` when the module was converted to the channels-last memory format.
    """
    backend = check_backend(backend)
    if embedding_size is None:
        embedding_size = module_output_size(module)
    digest = state_dict_digest(module.state_dict())
    use_onnx = backend == Backend.ONNX or (backend == Backend.AUTO and _auto_onnx_for(module))
    if use_onnx:
        session = _cached_onnx_session(module, digest) if cache_onnx else ort_session(onnx_bytes_from_module(module))
        forward = ort_forward(session)
    else:
        forward = torch_forward(module, channels_last)
    return Embedder(
        forward,
        network=network,
        embedding_size=embedding_size,
        weights_digest=digest,
        flip=flip,
        backend="onnx" if use_onnx else "torch",
        source=source,
    )


def _auto_onnx_for(module: torch.nn.Module) -> bool:
    try:
        device = next(module.parameters()).device
    except StopIteration:
        return False
    return AUTO_PREFERS_ONNX and device.type == "cpu"


def check_backend(backend: Backend | str) -> Backend:
    return Backend.parse(backend, "backend")


# ------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------


def ort_session(model: bytes | str | Path, *, cache: bool = True) -> Any:
    """An ONNX Runtime session for ``model`` (bytes or a file); a file's optimised graph is cached
    (CPU only, see the module docstring) unless ``cache`` is False."""
    import onnxruntime as ort

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    if isinstance(model, bytes):
        return ort.InferenceSession(model, sess_options=_ort_options(), providers=providers)
    cached = _optimized_path(Path(model)) if cache and providers == ["CPUExecutionProvider"] else None
    if cached is not None and cached.is_file():
        try:  # already optimised: open it as it is
            return ort.InferenceSession(str(cached), sess_options=_ort_options(optimize=False), providers=providers)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            pass
    opts = _ort_options()
    tmp = None
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            opts.optimized_model_filepath = str(tmp)  # ORT writes the optimised graph while it opens
        except OSError:  # an unwritable cache only costs the optimisation each time
            tmp = None
    try:
        session = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    except Exception:
        if tmp is None:
            raise
        _remove(tmp)  # the optimised copy could not be written: open without it
        return ort.InferenceSession(str(model), sess_options=_ort_options(), providers=providers)
    if tmp is not None:
        try:
            os.replace(tmp, cached)  # type: ignore[arg-type]
        except OSError:
            _remove(tmp)
    return session


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # not ours to clean up (a folder, no permission): the cache stays unused
        pass


def _ort_options(optimize: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3  # errors only
    # Idle ORT threads wait without spinning: spinning doubled the CPU time of a batch of faces
    # (0.29 s vs 0.16 s for 8 faces, mbf, 2 cores) and took cores from the detection threads.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = os.environ.get("KFACE_THREADS")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts


def _optimized_path(model: Path) -> Path | None:
    """Where the optimised graph of the model file ``model`` is cached, or None (no such file).

    The key changes with the file (path, size, modification time), the ONNX Runtime version and
    the CPU (an optimised graph may use the instructions of the CPU it was made on)."""
    import onnxruntime as ort

    try:
        st = model.stat()
    except OSError:
        return None
    key = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ort.__version__}|{_cpu_signature()}"
    return cache_dir() / "onnx-optimized" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def _cpu_signature() -> str:
    """The CPU model and instruction-set flags (Linux), else the platform's processor name."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read(200_000).splitlines() if line.startswith(("model name", "flags"))]
        if lines:
            return "|".join(lines[:2])
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}"


def ort_forward(session: Any, what: str = "the ONNX model") -> ForwardFn:
    """A forward function over an ONNX Runtime session; a failed run is one line, never a traceback."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def forward(x: np.ndarray) -> np.ndarray:
        try:
            return session.run([output_name], {input_name: x})[0]
        except Exception as e:  # ORT's Fail, RuntimeException, InvalidArgument...; MemoryError
            if _is_allocation_failure(e):
                raise out_of_memory(f"{what} on {len(x)} faces") from None
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise InputError(
                f"{what} failed to run on {len(x)} faces: {detail}",
                hint="Check that it is a face embedding model taking float32 [N, 3, 112, 112].",
            ) from None

    return forward
