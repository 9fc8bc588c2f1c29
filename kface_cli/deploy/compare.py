"""Photos to embeddings and one-to-one comparison: ``kface embed`` and ``kface verify``.

Each photo becomes one aligned face the way evaluation loads images
(:class:`kface_cli.embedding.photos.FaceLoader`): an aligned 112x112 (or 224x224) crop is used as
it is, any other photo goes through detection and alignment (:mod:`kface_cli.face.pipeline`) and
its largest face is used.

* :func:`verify_photos`: are two photos the same person? Squared-L2 distance between the unit
  embeddings (``2 - 2 cos``), compared with the model's threshold (the one ``kface identify``
  uses: ``--threshold``, else the calibrated one, else 1.5).
* :func:`embed_photos` + :func:`save_embeddings`: one unit vector per photo, written as ``.npy``
  with a ``.names.txt`` sidecar (line i names row i), or as HDF5 (``.h5``/``.hdf5``: datasets
  ``embeddings`` and ``names``, the model in the attributes). :func:`load_embeddings` reads both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.errors import InputError, KFaceError

#: File types ``kface embed --out`` writes, by extension.
NPY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5")
#: The sidecar beside a ``.npy``: ``faces.npy`` -> ``faces.names.txt``, one image path per row.
NAMES_SUFFIX = ".names.txt"


def _face_of(path: Path, loader: Any) -> np.ndarray:
    face = loader(path)
    if face is None:
        raise InputError(f"no face found in {path}", hint="Use a photo where the face is clearly visible.")
    return face


def _skipping(loader: Any) -> Any:
    """``loader`` that warns about a photo it cannot use (unreadable, no annotation) and returns None."""
    from kface_cli.console import warn

    def load(path: Path) -> np.ndarray | None:
        try:
            return loader(path)
        except KFaceError as e:
            warn(f"{path}: {e.message}: skipped")
            return None

    return load


@dataclass
class VerifyResult:
    image1: Path
    image2: Path
    distance: float
    threshold: float
    threshold_source: str  # "given", "calibrated_verification" or "uncalibrated" (the default threshold)
    model: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    threshold_detail: str = ""  # the threshold's origin in words

    @property
    def same(self) -> bool:
        return self.distance < self.threshold

    @property
    def threshold_hint(self) -> str | None:
        """How to calibrate the threshold, when it is not calibrated."""
        from kface_cli.deploy.model import UNCALIBRATED, uncalibrated_hint

        return uncalibrated_hint() if self.threshold_source == UNCALIBRATED else None

    @property
    def cosine(self) -> float:
        return 1.0 - self.distance / 2.0

    def to_json(self) -> dict[str, Any]:
        """What ``kface verify --json`` prints (README: JSON output)."""
        return {
            "image1": self.image1,
            "image2": self.image2,
            "same": self.same,
            "distance": round(self.distance, 6),
            "cosine": round(self.cosine, 6),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "threshold_detail": self.threshold_detail,
            "threshold_hint": self.threshold_hint,
            "model": self.model,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def verify_photos(
    image1: str | Path,
    image2: str | Path,
    embedder: Any,
    *,
    threshold: float | None = None,
    landmarks: str = "auto",
) -> VerifyResult:
    """Compare the (largest) faces of two photos.

    Args:
        embedder: an :class:`~kface_cli.embedding.embedder.Embedder`, or a function returning one
            (called once both photos are found to exist).
        threshold: squared-L2 distance below which the two are the same person (None: the
            model's calibrated 1:1 threshold, else 1.5).
        landmarks: ``auto`` | ``detect`` | ``annotation`` (see :func:`kface_cli.face.detector.get_detector`).

    A photo without a face raises :class:`~kface_cli.errors.InputError`.
    """
    from kface_cli.dataset.provenance import warn_if_synthetic
    from kface_cli.deploy.model import describe_model, resolve_embedder, resolve_threshold
    from kface_cli.deploy.sources import photo_paths
    from kface_cli.embedding.photos import FaceLoader

    paths = [photo_paths([p]) for p in (image1, image2)]
    if any(len(p) != 1 for p in paths):
        raise InputError("verify compares two photos, not folders", hint="Pass two image files.")
    a, b = paths[0][0], paths[1][0]
    embedder = resolve_embedder(embedder)
    thr, source, detail = resolve_threshold(threshold, embedder, one_to_one=True)
    warnings = warn_if_synthetic(embedder)
    started = time.perf_counter()
    loader = FaceLoader(landmarks)
    emb = embedder.embed(np.stack([_face_of(a, loader), _face_of(b, loader)]))  # (2, D) unit
    distance = float(np.sum((emb[0] - emb[1]) ** 2))
    return VerifyResult(
        a, b, distance, thr, source, describe_model(embedder), warnings, time.perf_counter() - started, detail
    )


@dataclass
class EmbedResult:
    out: Path
    names_file: Path | None  # the .names.txt sidecar of a .npy
    images: list[Path]  # the embedded photos, one per row
    failed: list[Path]  # photos where no face was found (left out)
    embedding_size: int
    model: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """What ``kface embed --json`` prints (README: JSON output)."""
        return {
            "out": self.out,
            "names_file": self.names_file,
            "rows": len(self.images),
            "embedding_size": self.embedding_size,
            "images": self.images,
            "failed": self.failed,
            "model": self.model,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in NPY_SUFFIXES + HDF5_SUFFIXES:
        raise InputError(
            f"cannot tell the file type of {out.name}",
            hint="Use --out FILE.npy (with FILE.names.txt beside it) or --out FILE.h5 (HDF5).",
        )
    if out.is_dir():
        raise InputError(f"--out must be a file, got a folder: {out}", hint="Pass e.g. --out faces.npy.")


def embed_photos(
    paths: Sequence[str | Path],
    embedder: Any,
    out: str | Path,
    *,
    landmarks: str = "auto",
    batch_size: int = 64,
    aligned: bool = False,
) -> EmbedResult:
    """Embed the (largest) face of every photo in ``paths`` (photos or folders) and save them to ``out``.

    Photos without a face, or that cannot be read, are left out (listed in ``failed``, with a
    warning); when that leaves nothing, nothing is written (an earlier ``out`` stays as it was).
    ``out``: ``.npy`` (plus a ``.names.txt`` sidecar) or ``.h5``/``.hdf5``; written atomically.
    ``aligned``: every photo is an aligned square face crop (``kface crop`` output): no detection,
    and the next batch is decoded while the model embeds the current one (:func:`embed_aligned`).
    """
    from kface_cli.atomic import check_output
    from kface_cli.dataset.provenance import warn_if_synthetic
    from kface_cli.deploy.model import describe_model, resolve_embedder
    from kface_cli.deploy.sources import photo_paths
    from kface_cli.embedding.photos import FaceLoader, embed_paths

    out = Path(out)
    _check_out(out)
    files = photo_paths(paths)
    for target in _outputs(out):  # before the work: never over a photo, a gallery or a model
        check_output(target, inputs=[*paths, *files], option="--out")
    embedder = resolve_embedder(embedder)
    warnings = warn_if_synthetic(embedder)
    started = time.perf_counter()
    if aligned:
        emb, ok = embed_aligned(embedder, files, batch_size=batch_size)
    else:
        emb, ok = embed_paths(embedder, files, loader=_skipping(FaceLoader(landmarks)), batch_size=batch_size)
    kept = [f for f, good in zip(files, ok) if good]
    if not kept:
        raise InputError(
            f"no face found in any of the {len(files)} photos (e.g. {files[0]}); nothing written to {out}",
            hint="Check that the files are readable photos with a face (`kface detect` shows what is found).",
        )
    model = describe_model(embedder)
    names_file = save_embeddings(out, [str(f) for f in kept], emb[ok], model)
    return EmbedResult(
        out=out,
        names_file=names_file,
        images=kept,
        failed=[f for f, good in zip(files, ok) if not good],
        embedding_size=int(emb.shape[1]),
        model=model,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )


def embed_aligned(embedder: Any, files: Sequence[Path], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embed aligned square face crops, decoding batch k+1 on a thread while batch k is embedded.

    Decoding (OpenCV) and inference (ONNX Runtime, torch) both release the GIL, so the two
    overlap. Returns ``(emb (N, D) float32, ok (N,) bool)`` in the order of ``files``; a file
    that cannot be read, or is not square, is left out with a warning (``ok`` False).
    """
    from concurrent.futures import ThreadPoolExecutor

    from kface_cli.console import progress, warn
    from kface_cli.face.pipeline import load_aligned

    def decode(chunk: Sequence[Path]) -> tuple[list[np.ndarray], list[bool], list[str]]:
        faces, ok, problems = [], [], []
        for path in chunk:
            try:
                faces.append(load_aligned(path))
                ok.append(True)
            except KFaceError as e:  # warned from the calling thread, in order
                problems.append(f"{path}: {e.message}: skipped")
                ok.append(False)
        return faces, ok, problems

    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    emb = np.zeros((len(files), int(embedder.embedding_size)), dtype=np.float32)
    good = np.zeros(len(files), dtype=bool)
    with ThreadPoolExecutor(1, thread_name_prefix="kface-decode") as pool, progress("Embedding", len(files)) as bar:
        pending = pool.submit(decode, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            assert pending is not None
            faces, ok, problems = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(decode, chunks[k + 1])  # decoded while this batch is embedded
            for message in problems:
                warn(message)
            rows = np.flatnonzero(ok) + k * batch_size
            if faces:
                emb[rows] = embedder.embed(np.stack(faces), batch_size=batch_size)  # (F, D)
                good[rows] = True
            bar.advance(len(chunk))
    return emb, good


def _outputs(out: Path) -> list[Path]:
    """The files :func:`save_embeddings` writes for ``out`` (a .npy gets its names file)."""
    return [out, out.with_suffix(NAMES_SUFFIX)] if out.suffix.lower() in NPY_SUFFIXES else [out]


def save_embeddings(
    out: str | Path, names: Sequence[str], embeddings: np.ndarray, model: dict[str, Any] | None = None
) -> Path | None:
    """Write ``embeddings`` (N, D) with their ``names`` to ``out`` (.npy + .names.txt, or HDF5).

    Returns the names sidecar of a ``.npy`` (None for HDF5, which holds the names itself).
    """
    from kface_cli.atomic import atomic_open, atomic_path
    from kface_cli.console import SCHEMA_VERSION, to_json

    out = Path(out)
    _check_out(out)
    vectors = np.asarray(embeddings, dtype=np.float32)
    assert vectors.ndim == 2 and len(vectors) == len(names), "one name per embedding row"
    if out.suffix.lower() in NPY_SUFFIXES:
        sidecar = out.with_suffix(NAMES_SUFFIX)
        # both written in full before either is renamed into place: a full disk leaves the old
        # pair as it was, never new vectors beside old names
        with atomic_path(out) as tmp, atomic_open(sidecar, "w") as names_file:
            with open(tmp, "wb") as f:
                np.save(f, vectors)
                f.flush()
                os.fsync(f.fileno())
            names_file.write("".join(f"{n}\n" for n in names))
        return sidecar
    import io

    import h5py

    from kface_cli.atomic import EMBEDDINGS_MARKER, EMBEDDINGS_USERBLOCK

    # built in memory, then written as plain bytes: a full disk is one clean OSError (HDF5 itself
    # would print a traceback per object it fails to flush), and the old file stays as it was
    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=EMBEDDINGS_USERBLOCK) as f:
        f.create_dataset("embeddings", data=vectors)
        f.create_dataset(  # bytes-safe: a non-UTF-8 name is stored as the bytes it was
            "names", data=[n.encode("utf-8", "surrogateescape") for n in names], dtype=h5py.string_dtype("utf-8")
        )
        f.attrs["schema"] = SCHEMA_VERSION
        f.attrs["model"] = to_json(model or {}, indent=None)
    data = buf.getbuffer()
    data[: len(EMBEDDINGS_MARKER)] = EMBEDDINGS_MARKER  # the user block says what the file is, without h5py
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return None


def load_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(names, embeddings (N, D) float32)`` from a file :func:`save_embeddings` wrote."""
    path = Path(path)
    _check_out(path)
    if not path.is_file():
        raise InputError(f"not found: {path}")
    if path.suffix.lower() in NPY_SUFFIXES:
        vectors = np.load(path, allow_pickle=False)
        sidecar = path.with_suffix(NAMES_SUFFIX)
        names = sidecar.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if sidecar.is_file() else []
    else:
        import h5py

        with h5py.File(path, "r") as f:
            vectors = f["embeddings"][()]
            names = [n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else str(n) for n in f["names"][()]]
    if len(names) != len(vectors):
        raise InputError(f"{path} has {len(vectors)} embeddings but {len(names)} names", path=path)
    return names, np.asarray(vectors, dtype=np.float32)
