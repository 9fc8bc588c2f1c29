"""``kface export``: a trained backbone as a deployable ONNX (or TorchScript) model, self-checked.

The ONNX model is what insightface's tools expect: one input named ``data`` of shape
[N, 3, 112, 112] (dynamic batch), float32 RGB already normalised with (x - 127.5) / 127.5, faces
aligned to the ArcFace template; one output ``embedding`` [N, D], not L2-normalised. The
preprocessing stays outside the graph, as in insightface's model zoo, so the file drops into
code written for ``w600k_r50.onnx``. The model's metadata (``metadata_props``) records network,
embedding size, normalisation, alignment template, training run and fingerprint.

After writing, the export checks itself: the exported model and the torch model embed the same
batch of face-like crops (plus real validation crops when the workspace has them), and every
cosine similarity must be at least :data:`MIN_COSINE`. A failing check leaves no file behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.choices import ExportFormat
from kface_cli.defaults import DEFAULT_OPSET, FACE_SIZE
from kface_cli.errors import KFaceError
from kface_cli.face.preprocess import MEAN, STD
from kface_cli.workspace import RUN_BACKBONE, RUN_CHECKPOINT, RUN_ONNX, RUN_TORCHSCRIPT

#: The file written beside the source model when no ``--out`` is given, per format.
DEFAULT_FILE_NAMES = {ExportFormat.ONNX: RUN_ONNX, ExportFormat.TORCHSCRIPT: RUN_TORCHSCRIPT}
#: ONNX opsets accepted by ``--opset``.
OPSET_RANGE = (11, 21)
#: The exported model's input, as recorded in its metadata and shown by ``kface export``.
INPUT_DESCRIPTION = f"float32 [N, 3, {FACE_SIZE}, {FACE_SIZE}], RGB, (x - {MEAN}) / {STD}, ArcFace-aligned"
#: The exported model's embeddings must match torch's at least this well (cosine, every face).
MIN_COSINE = 0.9999
#: Faces embedded by the self-check (synthetic face-like crops, plus real crops when available).
CHECK_FACES = 16
#: Batch size of the self-check: not a divisor of CHECK_FACES, so a ragged batch tests dynamic batch.
CHECK_BATCH = 6


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    network: str
    embedding_size: int
    opset: int | None
    fingerprint: str
    source: Path
    size_bytes: int
    check_faces: int
    min_cosine: float
    max_abs_diff: float
    seconds: float
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "network": self.network,
            "embedding_size": self.embedding_size,
            "opset": self.opset,
            "fingerprint": self.fingerprint,
            "source": str(self.source),
            "size_bytes": self.size_bytes,
            "check": {
                "face_count": self.check_faces,
                "min_cosine": self.min_cosine,
                "max_abs_diff": self.max_abs_diff,
                "passed": True,
            },
            "seconds": round(self.seconds, 3),
            "metadata": self.metadata,
        }


def synthetic_faces(n: int, seed: int = 0) -> np.ndarray:
    """(n, 112, 112, 3) BGR uint8 face-like crops: skin-toned oval, eyes, brows, nose and mouth at
    the ArcFace template's places, random tones, lighting, shifts and noise. Real-looking enough to
    exercise every channel and a realistic activation range (uniform noise does not)."""
    import cv2

    from kface_cli.face.align import ARCFACE_TEMPLATE

    rng = np.random.default_rng(seed)
    side = FACE_SIZE
    out = np.empty((n, side, side, 3), np.uint8)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for i in range(n):
        bg = rng.uniform(30, 220, 3)
        img = np.empty((side, side, 3), np.float32)
        img[:] = bg
        img += (xx[..., None] / side - 0.5) * rng.uniform(-60, 60, 3)  # background gradient
        skin = np.array([rng.uniform(60, 190), rng.uniform(90, 200), rng.uniform(120, 235)])  # BGR
        dx, dy = rng.normal(0, 1.5, 2)
        cx, cy = 56 + dx, 66 + dy
        oval = ((xx - cx) / rng.uniform(36, 42)) ** 2 + ((yy - cy) / rng.uniform(48, 54)) ** 2 <= 1
        light = 1 + (xx - cx) / side * rng.uniform(-0.8, 0.8)
        img[oval] = skin[None, :] * light[oval][:, None]
        pts = ARCFACE_TEMPLATE + np.array([dx, dy]) + rng.normal(0, 1.0, (5, 2))
        dark = tuple(float(v) for v in rng.uniform(10, 60, 3))
        for ex, ey in pts[:2]:
            cv2.ellipse(img, (round(ex), round(ey)), (7, 3), 0, 0, 360, (235, 235, 235), -1)
            cv2.circle(img, (round(ex), round(ey)), 3, dark, -1)
            cv2.line(img, (round(ex - 9), round(ey - 9)), (round(ex + 9), round(ey - 10)), dark, 2)
        nx, ny = pts[2]
        cv2.line(img, (round(nx), round(ny - 14)), (round(nx - 2), round(ny)), tuple(float(v) for v in skin * 0.7), 2)
        cv2.line(
            img,
            (round(pts[3][0]), round(pts[3][1])),
            (round(pts[4][0]), round(pts[4][1])),
            (60.0, 50.0, float(rng.uniform(120, 200))),
            3,
        )
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
        img += rng.normal(0, rng.uniform(2, 8), img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _real_faces(workdir: Path | None, limit: int) -> np.ndarray | None:
    """Up to ``limit`` aligned validation crops from the workspace (split/val), if there are any."""
    from kface_cli.face.pipeline import load_aligned
    from kface_cli.workspace import Workspace

    val = Workspace.resolve(workdir).val_dir
    if not val.is_dir():
        return None
    paths = sorted(val.glob("*/*.jpg"))[:limit]
    if not paths:
        return None
    return np.stack([load_aligned(p) for p in paths])


def export_metadata(
    network: str, embedding_size: int, fingerprint: str, weights_digest: str, source: Path, opset: int | None
) -> dict[str, str]:
    """The key/value metadata stored inside an exported model."""
    from kface_cli import __version__
    from kface_cli.dataset.provenance import META_TRAINING_DATA, run_training_data
    from kface_cli.embedding.embedder import META_WEIGHTS_DIGEST, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME
    from kface_cli.face.align import ARCFACE_TEMPLATE
    from kface_cli.face.preprocess import PREPROCESS_SPEC

    run = source if source.is_dir() else source.parent
    meta = {
        "kface.version": __version__,
        "kface.network": network,
        "kface.embedding_size": str(embedding_size),
        "kface.input": f"{ONNX_INPUT_NAME}: {INPUT_DESCRIPTION}",
        "kface.output": f"{ONNX_OUTPUT_NAME}: float32 [N, {embedding_size}], not L2-normalised",
        "kface.color": "RGB",
        "kface.mean": str(MEAN),
        "kface.std": str(STD),
        "kface.preprocess": PREPROCESS_SPEC,
        "kface.alignment_template": json.dumps(ARCFACE_TEMPLATE.tolist()),
        "kface.alignment": f"similarity transform of 5 points (eyes, nose, mouth corners) to the template, {FACE_SIZE}x{FACE_SIZE}",
        "kface.training_run": run.name,
        "kface.source": str(source),
        "kface.fingerprint": fingerprint,
        META_WEIGHTS_DIGEST: weights_digest,
    }
    if opset is not None:
        meta["kface.opset"] = str(opset)
    record = run_training_data(run)
    if record is not None:
        meta[META_TRAINING_DATA] = json.dumps(record)
    return meta


def export_model(
    model: str | Path | None,
    out: str | Path | None = None,
    *,
    fmt: ExportFormat | str = ExportFormat.ONNX,
    opset: int = DEFAULT_OPSET,
    workdir: Path | None = None,
    network: str | None = None,
) -> ExportResult:
    """Export a run folder / checkpoint / backbone.pth to ``out`` and check it against torch.

    Args:
        model: run folder, run name, checkpoint.pt or backbone.pth (None: the latest run).
        out: the file to write (atomically; a failed self-check leaves nothing); None:
            :data:`DEFAULT_FILE_NAMES` in the run folder (the source model's folder).
        fmt: "onnx" (ONNX Runtime, TensorRT, OpenVINO...) or "torchscript" (libtorch, C++).
        opset: ONNX opset; the default runs on ONNX Runtime >= 1.11 and TensorRT 8.5+.
        network: backbone of a bare backbone.pth when it cannot be read from the run.
    """
    import torch

    from kface_cli.atomic import atomic_path
    from kface_cli.embedding import embedder, loading

    fmt = ExportFormat.parse(fmt, "export format")
    if not OPSET_RANGE[0] <= int(opset) <= OPSET_RANGE[1]:
        raise KFaceError(
            f"ONNX opset {opset} is out of range",
            hint=f"Use an opset between {OPSET_RANGE[0]} and {OPSET_RANGE[1]} ({DEFAULT_OPSET} is the default).",
        )
    t0 = time.perf_counter()
    source = loading.resolve_model_path(model, workdir)
    if out is None:
        out = (source if source.is_dir() else source.parent) / DEFAULT_FILE_NAMES[fmt]
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise KFaceError(f"--out must be a file, got a folder: {out}", hint=f"Pass e.g. --out {RUN_ONNX}.")
    expected_suffix = Path(DEFAULT_FILE_NAMES[fmt]).suffix
    if out.suffix.lower() != expected_suffix:
        raise KFaceError(
            f"{fmt} models are written as {expected_suffix} files, got {out.name}",
            hint=f"Use --out {out.with_suffix(expected_suffix).name}.",
        )
    if source.is_file() and source.suffix.lower() == ".onnx":
        raise KFaceError(
            f"{source.name} is already an ONNX model", hint="Export from a run folder, checkpoint.pt or backbone.pth."
        )
    from kface_cli.atomic import ONNX_KIND, TORCHSCRIPT_KIND, check_output

    inputs = [source, *((source / n for n in (RUN_BACKBONE, RUN_CHECKPOINT)) if source.is_dir() else ())]
    check_output(out, inputs=inputs, may_replace={ONNX_KIND if fmt is ExportFormat.ONNX else TORCHSCRIPT_KIND})
    weights = loading.load_torch_weights(source)
    module, name, size = loading.build_backbone(weights, network)
    module = module.float().eval()
    reference = embedder.embedder_from_module(module, network=name, backend="torch", source=source, embedding_size=size)
    meta = export_metadata(
        name, size, reference.fingerprint, reference.weights_digest, source, opset if fmt is ExportFormat.ONNX else None
    )

    faces = synthetic_faces(CHECK_FACES)
    real = _real_faces(workdir, CHECK_FACES)
    if real is not None:
        faces = np.concatenate([faces, real])
    expected = reference.embed(faces, batch_size=len(faces))  # one torch batch: one set of oneDNN kernels

    with atomic_path(out) as tmp:
        if fmt is ExportFormat.ONNX:
            _write_onnx(module, tmp, opset, meta)
            exported = loading.load_embedder(tmp, backend="onnx")
        else:
            traced = torch.jit.trace(module, torch.zeros(2, 3, FACE_SIZE, FACE_SIZE), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"kface.json": json.dumps(meta)})
            exported = loading.load_embedder(tmp, trust_model=True)  # the program we just traced
        got = exported.embed(faces, batch_size=CHECK_BATCH)
        cosines = (got * expected).sum(axis=1)
        min_cos = float(cosines.min())
        max_diff = float(np.abs(got - expected).max())
        if not min_cos >= MIN_COSINE:  # also catches NaN
            raise KFaceError(
                f"export self-check failed: the {fmt} model's embeddings differ from torch's (min cosine {min_cos:.6f} < {MIN_COSINE})",
                hint="Nothing was written. Try another --opset, or --format torchscript, and report the network and versions.",
            )
        if exported.fingerprint != reference.fingerprint:
            raise KFaceError(
                "export self-check failed: the exported model's fingerprint differs from the run's",
                hint="Nothing was written.",
            )
    return ExportResult(
        path=out,
        format=fmt.value,
        network=name,
        embedding_size=size,
        opset=opset if fmt is ExportFormat.ONNX else None,
        fingerprint=reference.fingerprint,
        source=source,
        size_bytes=out.stat().st_size,
        check_faces=len(faces),
        min_cosine=min_cos,
        max_abs_diff=max_diff,
        seconds=time.perf_counter() - t0,
        metadata=meta,
    )


def _write_onnx(module: Any, path: Path, opset: int, meta: dict[str, str]) -> None:
    import onnx

    from kface_cli import __version__
    from kface_cli.embedding.embedder import (
        META_GRAPH_DIGEST,
        ONNX_INPUT_NAME,
        ONNX_OUTPUT_NAME,
        onnx_bytes_from_module,
    )

    proto = onnx.load_from_string(onnx_bytes_from_module(module, opset))
    del proto.metadata_props[:]
    # ties the run's weights digest to this very graph: a later change of weights unties it
    graph = hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()
    for key, value in {**meta, META_GRAPH_DIGEST: graph}.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "kface"
    proto.producer_version = __version__
    proto.doc_string = f"ArcFace face embedding: input {ONNX_INPUT_NAME!r} {INPUT_DESCRIPTION}; output {ONNX_OUTPUT_NAME!r} [N, D] (L2-normalise it)."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
