"""Photos to embeddings and one-to-one comparison: ``kface embed`` and ``kface verify``.

Each photo becomes one aligned face the way evaluation loads images
(:class:`kface_cli.embedding.photos.FaceLoader`): an aligned 112x112 (or 224x224) crop is used as
it is, any other photo goes through detection and alignment (:mod:`kface_cli.face.pipeline`) and
its largest face is used.

* :func:`verify_photos`: are two photos the same person? Squared-L2 distance between the unit
  embeddings (``2 - 2 cos``), compared with the model's threshold (the one ``kface identify``
  uses: ``--threshold``, else the calibrated one, else 1.5).
* :func:`embed_photos` + :func:`save_embeddings`: one unit vector per photo (its largest face, with
  a warning when it has several), or per face (``all_faces``), written as ``.npy`` with a
  ``.names.txt`` sidecar (line i names row i) and a ``.faces.csv`` one (photo, face number and box
  of each row), or as HDF5 (``.h5``/``.hdf5``: datasets ``embeddings``, ``names``, ``boxes``,
  ``faces``, ``scores``; the model in the attributes). :func:`load_embeddings` reads both.
"""

from __future__ import annotations

import contextlib
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
#: ... and ``faces.faces.csv``: the photo, face number and box of each row (:data:`FACES_COLUMNS`).
FACES_SUFFIX = ".faces.csv"


#: What a photo given as an array is called in results (no file name).
ARRAY_LABEL = "<array>"
Photo = str | Path | np.ndarray  # a file, or a BGR uint8 (H, W, 3) image


@dataclass(frozen=True)
class UsedFace:
    """The face of a photo that a result is about: where it is, and how many the photo had."""

    image: str  # the photo's path, or "<array>"
    face: int  # 1 = the largest face of the photo
    box: tuple[float, float, float, float]  # x, y, w, h in the photo
    score: float  # detector confidence (NaN for an aligned crop used as it is)
    landmarks: str  # where the 5 points came from ("mesh", "annotation", "aligned-crop"...)
    face_count: int  # faces found in the photo

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "face": self.face,
            "box": [round(float(v), 1) for v in self.box],
            "score": None if not np.isfinite(self.score) else round(float(self.score), 4),
            "landmarks": self.landmarks,
            "face_count": self.face_count,
        }

    def describe(self) -> str:
        """E.g. "face 1 of 6 (box 141, 273, 346, 346)"."""
        return f"face {self.face} of {self.face_count} (box {', '.join(f'{v:.0f}' for v in self.box)})"


def _label(photo: Photo) -> str:
    return ARRAY_LABEL if isinstance(photo, np.ndarray) else str(photo)


def _found(photo: Photo, loader: Any, *, aligned: bool | None) -> list[Any]:
    """Every aligned face of a photo (a path through ``loader``, an array directly), largest first."""
    if isinstance(photo, np.ndarray):
        from kface_cli.face.pipeline import faces_in_image

        return faces_in_image(photo, loader.detector, aligned=aligned)
    return loader.faces(Path(photo))


def _used(label: str, found: list[Any], k: int = 0) -> UsedFace:
    f = found[k].face
    return UsedFace(label, k + 1, tuple(float(v) for v in f.box), float(f.score), f.landmarks, len(found))  # type: ignore[arg-type]


def several_faces_warning(used: UsedFace, *, option: str = "") -> str:
    """The warning when a photo has several faces and the largest was used."""
    return f"{used.image}: {used.face_count} faces, used the largest: {used.describe()}" + (
        f"; {option} keeps every face" if option else ""
    )


@dataclass
class VerifyResult:
    image1: str
    image2: str
    distance: float
    threshold: float
    threshold_source: str  # "given", "calibrated_verification" or "uncalibrated" (the default threshold)
    model: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    threshold_detail: str = ""  # the threshold's origin in words
    face1: UsedFace | None = None  # the face of each photo that was compared
    face2: UsedFace | None = None

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
        """What ``kface verify --json`` prints (docs/json.md): plain JSON types only."""
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
            "faces": [f.to_json() for f in (self.face1, self.face2) if f is not None],
            "model": _plain(self.model),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }

    def data(self) -> tuple[list[str], list[list[Any]]]:
        """``--format csv|tsv``: one row, every number in its own column (docs/json.md)."""
        columns = ["image1", "image2", "same", "distance", "cosine", "threshold", "threshold_source"]
        row: list[Any] = [self.image1, self.image2, self.same, round(self.distance, 6), round(self.cosine, 6)]
        row += [self.threshold, self.threshold_source]
        for k, f in ((1, self.face1), (2, self.face2)):
            columns += [f"x{k}", f"y{k}", f"w{k}", f"h{k}", f"face_count{k}"]
            row += [*(round(v, 1) for v in f.box), f.face_count] if f is not None else [None] * 5
        return columns, [row]


def _plain(obj: Any) -> Any:
    from kface_cli.console import jsonable as plain

    return plain(obj)


def verify_photos(
    image1: Photo,
    image2: Photo,
    embedder: Any,
    *,
    threshold: float | None = None,
    landmarks: str = "auto",
    aligned: bool | None = None,
) -> VerifyResult:
    """Compare the (largest) faces of two photos.

    Args:
        image1, image2: photo files, or BGR uint8 (H, W, 3) arrays.
        embedder: an :class:`~kface_cli.embedding.embedder.Embedder`, or a function returning one
            (called once both photos are found to exist).
        threshold: squared-L2 distance below which the two are the same person (None: the
            model's calibrated 1:1 threshold, else 1.5).
        landmarks: ``auto`` | ``detect`` | ``annotation`` (see :func:`kface_cli.face.detector.get_detector`).
        aligned: True: both photos are aligned crops, used as they are; None: checked
            (:func:`kface_cli.face.pipeline.faces_in_image`).

    A photo without a face raises :class:`~kface_cli.errors.InputError`; with several faces the
    largest is used, with a warning, and the result says which (``face1``, ``face2``).
    """
    from kface_cli.console import warn
    from kface_cli.dataset.provenance import warn_if_synthetic
    from kface_cli.deploy.model import describe_model, resolve_embedder, resolve_threshold
    from kface_cli.deploy.sources import photo_paths
    from kface_cli.embedding.photos import FaceLoader

    photos: list[Photo] = []
    for p in (image1, image2):
        if isinstance(p, np.ndarray):
            photos.append(p)
            continue
        files = photo_paths([p])
        if len(files) != 1:
            raise InputError("verify compares two photos, not folders", hint="Pass two image files.")
        photos.append(files[0])
    embedder = resolve_embedder(embedder)
    thr, source, detail = resolve_threshold(threshold, embedder, one_to_one=True)
    warnings = warn_if_synthetic(embedder)
    started = time.perf_counter()
    loader = FaceLoader(landmarks, aligned=aligned)
    used, crops = [], []
    for photo in photos:
        found = _found(photo, loader, aligned=aligned)
        if not found:
            raise InputError(f"no face found in {_label(photo)}", hint="Use a photo where the face is clearly visible.")
        used.append(_used(_label(photo), found))
        crops.append(found[0].crop)
        if len(found) > 1:
            warn(several_faces_warning(used[-1]))
    emb = embedder.embed(np.stack(crops))  # (2, D) unit
    distance = float(np.sum((emb[0] - emb[1]) ** 2))
    return VerifyResult(
        used[0].image,
        used[1].image,
        distance,
        thr,
        source,
        describe_model(embedder),
        warnings,
        time.perf_counter() - started,
        detail,
        used[0],
        used[1],
    )


@dataclass
class EmbedResult:
    out: Path
    names_file: Path | None  # the .names.txt sidecar of a .npy
    faces_file: Path | None  # the .faces.csv sidecar of a .npy (image, face, box of each row)
    faces: list[UsedFace]  # one per row of the file
    failed: list[Path]  # photos where no face was found (left out)
    embedding_size: int
    model: dict[str, Any]
    all_faces: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images(self) -> list[str]:
        """The photo of each row."""
        return [f.image for f in self.faces]

    def to_json(self) -> dict[str, Any]:
        """What ``kface embed --json`` prints (docs/json.md): plain JSON types only."""
        return {
            "out": str(self.out),
            "names_file": str(self.names_file) if self.names_file else None,
            "faces_file": str(self.faces_file) if self.faces_file else None,
            "row_count": len(self.faces),
            "embedding_size": self.embedding_size,
            "all_faces": self.all_faces,
            "faces": [{"row": i, **f.to_json()} for i, f in enumerate(self.faces)],
            "failed": [str(p) for p in self.failed],
            "model": _plain(self.model),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }

    def data(self) -> tuple[list[str], list[list[Any]]]:
        """``--format csv|tsv``: one row per embedded face (the rows of the file, in order)."""
        return FACES_COLUMNS, [_face_row(i, f) for i, f in enumerate(self.faces)]


#: Columns of the ``.faces.csv`` sidecar and of ``kface embed --format csv``.
FACES_COLUMNS = ["row", "image", "face", "x", "y", "w", "h", "score", "landmarks", "face_count"]


def _face_row(i: int, f: UsedFace) -> list[Any]:
    score = None if not np.isfinite(f.score) else round(float(f.score), 4)
    return [i, f.image, f.face, *(round(float(v), 1) for v in f.box), score, f.landmarks, f.face_count]


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
    all_faces: bool = False,
    aligned: bool | None = None,
) -> EmbedResult:
    """Embed the largest face of every photo in ``paths`` (photos or folders), or every face with
    ``all_faces``, and save them to ``out`` with each face's photo and box.

    A photo with several faces, without ``all_faces``, gives a warning that names the face kept.
    Photos without a face, or that cannot be read, are left out (listed in ``failed``, with a
    warning); when that leaves nothing, nothing is written (an earlier ``out`` stays as it was).
    ``out``: ``.npy`` (plus ``.names.txt`` and ``.faces.csv`` sidecars) or ``.h5``/``.hdf5``
    (datasets ``embeddings``, ``names``, ``boxes``, ``faces``); written atomically. ``aligned``:
    True: every photo is an aligned crop, used as it is; None: checked.
    """
    from kface_cli.atomic import check_output
    from kface_cli.console import progress, warn
    from kface_cli.dataset.provenance import warn_if_synthetic
    from kface_cli.deploy.model import describe_model, resolve_embedder
    from kface_cli.deploy.sources import photo_paths
    from kface_cli.embedding.photos import FaceLoader

    out = Path(out)
    _check_out(out)
    files = photo_paths(paths)
    for target in _outputs(out):  # before the work: never over a photo, a gallery or a model
        check_output(target, inputs=[*paths, *files], option="--out")
    embedder = resolve_embedder(embedder)
    warnings = warn_if_synthetic(embedder)
    started = time.perf_counter()
    loader = FaceLoader(landmarks, aligned=aligned)
    used: list[UsedFace] = []
    crops: list[np.ndarray] = []
    failed: list[Path] = []
    several = 0
    with progress("Finding faces", total=len(files)) as bar:
        for f in files:
            try:
                found = loader.faces(f)
            except KFaceError as e:
                warn(f"{f}: {e.message}: skipped")
                found = []
            if not found:
                failed.append(f)
            for k in range(len(found) if all_faces else min(1, len(found))):
                used.append(_used(str(f), found, k))
                crops.append(found[k].crop)
            if len(found) > 1 and not all_faces:
                several += 1
                if several <= 5:
                    warn(several_faces_warning(used[-1], option="--all-faces"))
            bar.advance()
    if several > 5:
        warn(f"{several} photos had several faces; the largest of each was embedded (--all-faces keeps every face)")
    if failed:
        warn(f"no face found in {len(failed)} photo(s) (e.g. {failed[0]}); they are left out")
    if not crops:
        raise InputError(
            f"no face found in any of the {len(files)} photos (e.g. {files[0]}); nothing written to {out}",
            hint="Check that the files are readable photos with a face (`kface detect` shows what is found).",
        )
    emb = embedder.embed(np.stack(crops), batch_size=batch_size)
    model = describe_model(embedder)
    names_file, faces_file = save_embeddings(out, [u.image for u in used], emb, model, faces=used)
    return EmbedResult(
        out=out,
        names_file=names_file,
        faces_file=faces_file,
        faces=used,
        failed=failed,
        embedding_size=int(emb.shape[1]),
        model=model,
        all_faces=all_faces,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )


def _outputs(out: Path) -> list[Path]:
    """The files :func:`save_embeddings` writes for ``out`` (a .npy gets its names file)."""
    return [out, out.with_suffix(NAMES_SUFFIX)] if out.suffix.lower() in NPY_SUFFIXES else [out]


def save_embeddings(
    out: str | Path,
    names: Sequence[str],
    embeddings: np.ndarray,
    model: dict[str, Any] | None = None,
    *,
    faces: Sequence[UsedFace] | None = None,
) -> tuple[Path | None, Path | None]:
    """Write ``embeddings`` (N, D) with their ``names`` (and ``faces``: photo and box of each row) to ``out``.

    ``.npy``: the array, ``.names.txt`` (line i names row i) and, with ``faces``, ``.faces.csv``
    (:data:`FACES_COLUMNS`). HDF5: datasets ``embeddings``, ``names`` and, with ``faces``,
    ``boxes`` (N, 4: x, y, w, h), ``faces`` (N: 1 = largest face of its photo) and ``scores``.
    Returns the sidecars of a ``.npy`` (names, faces); None for HDF5, which holds everything itself.
    """
    from kface_cli.atomic import atomic_open, atomic_path
    from kface_cli.console import SCHEMA_VERSION, data_text, to_json

    out = Path(out)
    _check_out(out)
    vectors = np.asarray(embeddings, dtype=np.float32)
    assert vectors.ndim == 2 and len(vectors) == len(names), "one name per embedding row"
    assert faces is None or len(faces) == len(names), "one face per embedding row"
    if out.suffix.lower() in NPY_SUFFIXES:
        sidecar = out.with_suffix(NAMES_SUFFIX)
        faces_file = out.with_suffix(FACES_SUFFIX) if faces is not None else None
        # all written in full before any is renamed into place: a full disk leaves the old
        # files as they were, never new vectors beside old names
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(out))
            names_file = stack.enter_context(atomic_open(sidecar, "w"))
            with open(tmp, "wb") as f:
                np.save(f, vectors)
                f.flush()
                os.fsync(f.fileno())
            names_file.write("".join(f"{n}\n" for n in names))
            if faces is not None and faces_file is not None:
                stack.enter_context(atomic_open(faces_file, "w")).write(
                    data_text(FACES_COLUMNS, [_face_row(i, u) for i, u in enumerate(faces)])
                )
        return sidecar, faces_file
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
        if faces is not None:
            f.create_dataset("boxes", data=np.array([u.box for u in faces], dtype=np.float32).reshape(-1, 4))
            f.create_dataset("faces", data=np.array([u.face for u in faces], dtype=np.int32))
            f.create_dataset("scores", data=np.array([u.score for u in faces], dtype=np.float32))
        f.attrs["schema"] = SCHEMA_VERSION
        f.attrs["model"] = to_json(model or {}, indent=None)
    data = buf.getbuffer()
    data[: len(EMBEDDINGS_MARKER)] = EMBEDDINGS_MARKER  # the user block says what the file is, without h5py
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return None, None


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
