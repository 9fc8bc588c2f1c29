"""kface from Python: a few small functions for notebooks and scripts.

::

    from kface_cli import api

    model = api.load_model("runs/demo")                 # a run, demo.onnx, an insightface backbone.pth...
    photo = api.load_image("party.jpg")                 # (H, W, 3) RGB uint8, EXIF-rotated
    faces = api.detect(photo)                           # [DetectedFace(box, score, points5, landmarks)]
    crops = api.align(photo)                            # [(112, 112, 3) RGB uint8], largest face first
    vector = api.embed(model, photo)                    # (D,) unit vector of the largest face
    vectors = api.embed(model, ["a.jpg", "b.jpg"])      # (2, D), a row of NaN where a photo has no face
    same = api.embed_aligned(model, crops)              # (N, D): aligned crops, used as they are
    result = api.verify(model, "a.jpg", "b.jpg")        # result.same, result.distance, result.threshold

    gallery = api.Gallery("gallery.h5", model)
    gallery.enroll("people/")                           # people/<name>.jpg or people/<name>/*.jpg
    gallery.add("Alice", photo)                         # one photo (its largest face) or one embedding
    found = gallery.identify(photo)                     # found.images[0].faces[0].name

A photo is a file path, an RGB ``(H, W, 3)`` uint8 array (what :func:`load_image`, PIL,
face_recognition and matplotlib give) or a PIL image. OpenCV frames are BGR: pass them with
``bgr=True``. A photo is searched with the face detector; it is used as an aligned crop only when
a check proves it (:func:`kface_cli.face.pipeline.faces_in_image`) or with ``aligned=True``.

Every function here calls the same domain functions as the ``kface`` command, so results match
it exactly, and every result's ``to_json()`` is plain JSON (``json.dumps`` takes it). Distances
are squared L2 between unit vectors (``2 - 2 cos``; 0 = identical). Long calls show ``tqdm.auto``
progress bars, which render as widgets in Jupyter; errors a user can fix (a wrong shape or dtype
included) raise :class:`kface_cli.errors.KFaceError` with a message that says what was expected.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.console import use_tqdm
from kface_cli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.deploy.compare import VerifyResult
    from kface_cli.deploy.enroll import AddResult, EnrollResult
    from kface_cli.deploy.identify import IdentifyResult
    from kface_cli.embedding.embedder import Embedder
    from kface_cli.face.detector import DetectedFace
    from kface_cli.face.pipeline import AlignedFace

#: A photo: a file path, an RGB (H, W, 3) uint8 array, or a PIL image (BGR arrays with ``bgr=True``).
Photo = Any

__all__ = [
    "Gallery",
    "align",
    "detect",
    "embed",
    "embed_aligned",
    "load_image",
    "load_model",
    "verify",
]


def load_model(
    model: str | Path | None = None,
    *,
    network: str | None = None,
    flip: bool = False,
    backend: str = "auto",
    workdir: str | Path | None = None,
    trust_model: bool = False,
) -> Embedder:
    """Load a face model: a run folder or name, ``checkpoint.pt``, insightface ``backbone.pth`` or ``.onnx``.

    ``model=None`` takes the best model of the workspace's latest run. ``network`` names the
    backbone of a bare ``backbone.pth`` (r18...r200, mbf); ``flip`` adds the mirrored face's
    embedding (slightly more accurate, twice the compute). ``backend``: "torch", "onnx" (ONNX
    Runtime) or "auto" (the faster: ONNX Runtime on a CPU, after a one-off conversion).
    ``trust_model=True`` lets a TorchScript file run: TorchScript is a program that can read and
    write any file, so it is refused otherwise (docs/security.md).
    """
    from kface_cli.embedding.loading import load_embedder

    return load_embedder(
        model,
        workdir=Path(workdir) if workdir else None,
        network=network,
        flip=flip,
        backend=backend,  # type: ignore[arg-type]
        trust_model=trust_model,
    )


def _model(model: Any) -> Embedder:
    """A loaded model: ``model`` itself, or :func:`load_model` of a path or run name (untrusted)."""
    if isinstance(model, (str, Path)):
        return load_model(model)
    if hasattr(model, "fingerprint"):  # an Embedder, or any object that carries a model's identity
        return model
    from kface_cli.errors import KFaceError

    raise KFaceError(
        f"model must be a loaded model (api.load_model) or a path, got {type(model).__name__}",
        hint="model = api.load_model('runs/demo'), then pass model.",
    )


def load_image(path: str | Path) -> np.ndarray:
    """A photo file as an RGB (H, W, 3) uint8 array, turned upright by its EXIF orientation.

    Grey, RGBA and 16-bit files are converted; JPEG, PNG, BMP, WebP and TIFF are read (as
    face_recognition's ``load_image_file``, and what every function here takes).
    """
    from kface_cli.face.imageio import read_image

    return np.ascontiguousarray(read_image(Path(path))[..., ::-1])


# ------------------------------------------------------------------------------------------
# photos in, BGR images out (the domain modules work in OpenCV's BGR order)
# ------------------------------------------------------------------------------------------


def _is_path(photo: Any) -> bool:
    return isinstance(photo, (str, Path))


def _check_array(image: Any, what: str, *, bgr: bool) -> np.ndarray:
    order = "BGR" if bgr else "RGB"
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(
            f"{what} must be a uint8 image (values 0-255), got dtype {arr.dtype}",
            hint="Convert with (image * 255).clip(0, 255).astype('uint8') if it holds 0-1 floats, "
            "or read photos with api.load_image(path).",
        )
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(
            f"{what} must be an {order} image of shape (H, W, 3), got shape {arr.shape}",
            hint="A grey image: np.stack([grey] * 3, axis=-1); RGBA: image[..., :3]; "
            "several photos: pass a list of them.",
        )
    if min(arr.shape[:2]) < 8:
        raise InputError(f"{what} is too small to hold a face: {arr.shape[1]}x{arr.shape[0]} pixels")
    return arr


def _bgr(photo: Photo, *, bgr: bool = False, what: str = "photo") -> tuple[np.ndarray, Path | None, str]:
    """``(BGR uint8 image, its file or None, its label)`` of any photo kind (module docstring)."""
    from kface_cli.face.imageio import read_image

    if _is_path(photo):
        path = Path(photo)
        return read_image(path), path, str(path)
    if type(photo).__module__.startswith("PIL.") and hasattr(photo, "convert"):
        from PIL import ImageOps

        rgb = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
        return np.ascontiguousarray(rgb[..., ::-1]), None, "<PIL image>"
    if isinstance(photo, np.ndarray):
        arr = _check_array(photo, what, bgr=bgr)
        return (arr if bgr else np.ascontiguousarray(arr[..., ::-1])), None, "<array>"
    raise InputError(
        f"{what} must be a file path, an RGB (H, W, 3) uint8 array or a PIL image, got {type(photo).__name__}",
        hint="OpenCV frames are BGR arrays: pass them with bgr=True.",
    )


def _out(crop_bgr: np.ndarray, bgr: bool) -> np.ndarray:
    """A crop in the caller's channel order (RGB unless ``bgr``)."""
    return crop_bgr if bgr else np.ascontiguousarray(crop_bgr[..., ::-1])


@functools.lru_cache(maxsize=4)
def _detector(landmarks: str, min_face: int | None) -> Any:
    from kface_cli.face.detector import get_detector

    return get_detector(landmarks, min_face=min_face) if min_face else get_detector(landmarks)  # type: ignore[arg-type]


def _faces(
    photo: Photo, *, bgr: bool, aligned: bool | None, landmarks: str = "auto", min_face: int | None = None
) -> tuple[list[AlignedFace], str]:
    from kface_cli.face.pipeline import faces_in_image

    image, path, label = _bgr(photo, bgr=bgr)
    return faces_in_image(image, _detector(landmarks, min_face), aligned=aligned, path=path), label


# ------------------------------------------------------------------------------------------
# faces
# ------------------------------------------------------------------------------------------


def detect(
    photo: Photo,
    *,
    bgr: bool = False,
    landmarks: str = "auto",
    min_face: int | None = None,
    aligned: bool | None = None,
) -> list[DetectedFace]:
    """The faces in a photo, largest first: each with ``box`` (x, y, w, h), ``score`` and ``points5`` (5, 2).

    ``landmarks``: "auto" (a K-Face ``.txt`` beside a photo file when there is one, else the
    detector), "detect" or "annotation". ``min_face``: smallest face searched for, in pixels.
    ``aligned=True``: the photo is an aligned crop (its face is the whole square).
    """
    return [found.face for found in _faces(photo, bgr=bgr, aligned=aligned, landmarks=landmarks, min_face=min_face)[0]]


def align(
    photo: Photo,
    *,
    bgr: bool = False,
    landmarks: str = "auto",
    min_face: int | None = None,
    aligned: bool | None = None,
) -> list[np.ndarray]:
    """Each face of a photo aligned to the ArcFace template: (112, 112, 3) uint8 crops, largest first.

    The crops are RGB, or BGR with ``bgr=True`` (the order of the input); :func:`embed_aligned`
    takes them back.
    """
    found, _ = _faces(photo, bgr=bgr, aligned=aligned, landmarks=landmarks, min_face=min_face)
    return [_out(f.crop, bgr) for f in found]


def embed(
    model: Embedder | str | Path,
    photo: Photo | Sequence[Photo],
    *,
    bgr: bool = False,
    aligned: bool | None = None,
    landmarks: str = "auto",
    batch_size: int = 64,
) -> np.ndarray:
    """The unit-length embedding of a photo's largest face: shape (D,).

    ``photo``: one photo (a path, an RGB array, a PIL image; a BGR frame with ``bgr=True``); a
    photo without a face raises :class:`~kface_cli.errors.KFaceError`, one with several faces
    warns and names the face used. A list of photos gives (N, D), a row of NaN where a photo has
    no face. Aligned crops (from :func:`align`) go to :func:`embed_aligned`; ``aligned=True``
    treats the photos as aligned crops too.
    """
    from kface_cli.console import warn
    from kface_cli.deploy.compare import UsedFace, several_faces_warning

    single = _is_path(photo) or isinstance(photo, np.ndarray) or hasattr(photo, "convert")
    if isinstance(photo, np.ndarray) and photo.ndim == 4:
        raise InputError(
            f"embed() takes one photo (H, W, 3) or a list of photos, got an array of shape {photo.shape}",
            hint="For aligned (N, 112, 112, 3) crops use api.embed_aligned(model, crops).",
        )
    model = _model(model)
    photos = [photo] if single else list(photo)
    crops: list[np.ndarray] = []
    rows: list[int] = []
    with use_tqdm():
        from kface_cli.console import progress

        with progress("Finding faces", total=len(photos)) if len(photos) > 1 else _no_bar() as bar:
            for i, p in enumerate(photos):
                found, label = _faces(p, bgr=bgr, aligned=aligned, landmarks=landmarks)
                bar.advance()
                if not found:
                    if single:
                        raise InputError(
                            f"no face found in {label}", hint="Use a photo where the face is clearly visible."
                        )
                    warn(f"{label}: no face found: its row is NaN")
                    continue
                if len(found) > 1:
                    f = found[0].face
                    used = UsedFace(label, 1, f.box, f.score, f.landmarks, len(found))
                    warn(several_faces_warning(used))
                crops.append(found[0].crop)
                rows.append(i)
    vectors = np.full((len(photos), int(model.embedding_size)), np.nan, dtype=np.float32)
    if crops:
        vectors[rows] = model.embed(np.stack(crops), batch_size=batch_size)
    return vectors[0] if single else vectors


def embed_aligned(model: Embedder | str | Path, crops: Any, *, bgr: bool = False, batch_size: int = 64) -> np.ndarray:
    """Embeddings of aligned face crops, used as they are (no detection).

    ``crops``: one (112, 112, 3) uint8 crop -> (D,), or (N, 112, 112, 3) / a list of crops ->
    (N, D); RGB (as :func:`align` returns them), or BGR with ``bgr=True``. The face must lie on
    the ArcFace template (``kface crop`` output, insightface datasets, :func:`align`).
    """
    from kface_cli.defaults import FACE_SIZE

    arr = np.asarray(crops) if not isinstance(crops, list) else np.stack([np.asarray(c) for c in crops])
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    if batch.dtype != np.uint8:
        raise InputError(
            f"aligned crops must be uint8 (values 0-255), got dtype {batch.dtype}",
            hint="Make crops with api.align(photo).",
        )
    if batch.ndim != 4 or batch.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise InputError(
            f"aligned crops must have shape ({FACE_SIZE}, {FACE_SIZE}, 3) or (N, {FACE_SIZE}, {FACE_SIZE}, 3), "
            f"got {arr.shape}",
            hint="Photos go to api.embed(model, photo); api.align(photo) makes crops.",
        )
    bgr_batch = batch if bgr else np.ascontiguousarray(batch[..., ::-1])
    vectors = _model(model).embed(bgr_batch, batch_size=batch_size)
    return vectors[0] if single else vectors


class _no_bar:
    def __enter__(self) -> _no_bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: float = 1) -> None:
        return None


def verify(
    model: Embedder | str | Path,
    photo1: Photo,
    photo2: Photo,
    *,
    bgr: bool = False,
    threshold: float | None = None,
    aligned: bool | None = None,
    landmarks: str = "auto",
) -> VerifyResult:
    """Are two photos the same person? ``.same``, ``.distance``, ``.cosine``, ``.threshold`` (+ its source).

    The largest face of each photo is compared (``.face1``, ``.face2`` say which: box and how
    many faces the photo had). The threshold is ``threshold`` when given, else the model's
    calibrated one (``kface evaluate --save-threshold``), else 1.5 (cosine 0.25).
    """
    from kface_cli.deploy.compare import verify_photos

    pair = []
    for k, p in enumerate((photo1, photo2), 1):
        pair.append(p if _is_path(p) else _bgr(p, bgr=bgr, what=f"photo{k}")[0])
    return verify_photos(pair[0], pair[1], _model(model), threshold=threshold, aligned=aligned, landmarks=landmarks)


class Gallery:
    """Known people in an HDF5 gallery file (created on the first :meth:`enroll` or :meth:`add`), searched with FAISS."""

    def __init__(self, path: str | Path, model: Embedder | str | Path):
        self.path = Path(path)
        self.model = _model(model)

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r}, model={self.model.network} {self.model.fingerprint})"

    def enroll(self, folder: str | Path, **options: Any) -> EnrollResult:
        """Add ``folder``'s people: ``<name>.jpg`` (one photo each) and/or ``<name>/*.jpg`` (several).

        ``options`` as :func:`kface_cli.deploy.enroll.enroll_folder` (``aligned``, ``per_identity``,
        ``replace``, ``landmarks``, ``min_face``, ``batch_size``). Re-enrolling a photo is a no-op.
        """
        from kface_cli.deploy.enroll import enroll_folder

        with use_tqdm():
            return enroll_folder(folder, self.path, self.model, **options)

    def add(
        self,
        name: str,
        photo_or_embedding: Any,
        *,
        bgr: bool = False,
        aligned: bool | None = None,
        landmarks: str = "auto",
        source: str | None = None,
    ) -> AddResult:
        """Add one template of ``name``: a photo's largest face, or an embedding.

        ``photo_or_embedding``: a photo (path, RGB array, PIL image; BGR with ``bgr=True``), or a
        (D,) vector made with this gallery's model (``api.embed``; normalised to unit length).
        "unknown" and empty names are refused (``kface identify`` reports "unknown" for no
        match). Adding the same template twice is a no-op (``result.added`` is False).
        """
        from kface_cli.console import warn
        from kface_cli.deploy.compare import UsedFace, several_faces_warning
        from kface_cli.deploy.enroll import add_template
        from kface_cli.face.imageio import check_identity_name

        check_identity_name(name)
        value = photo_or_embedding
        if isinstance(value, np.ndarray) and value.ndim == 1 or isinstance(value, (list, tuple)):
            return add_template(
                self.path, name, self.model, embedding=np.asarray(value), source=source or "<embedding>"
            )
        found, label = _faces(value, bgr=bgr, aligned=aligned, landmarks=landmarks)
        if not found:
            raise InputError(f"no face found in {label}", hint="Use a photo where the face is clearly visible.")
        face = found[0].face
        if len(found) > 1:
            warn(several_faces_warning(UsedFace(label, 1, face.box, face.score, face.landmarks, len(found))))
        return add_template(
            self.path,
            name,
            self.model,
            face=found[0].crop,
            source=source or label,
            box=face.box,
            score=face.score,
            face_count=len(found),
        )

    def identify(self, photos: Photo | Sequence[Photo], *, bgr: bool = False, **options: Any) -> IdentifyResult:
        """Name the faces in photos; ``result.images[i].faces[j].name`` ("unknown" if none).

        ``photos``: one photo or a list (paths, folders and videos; RGB arrays and PIL images; BGR
        frames with ``bgr=True``), reported in the order given. ``options`` as
        :func:`kface_cli.deploy.identify.identify` (``threshold``, ``top_k``, ``every``,
        ``aligned``, ``landmarks``, ``min_face``, ``annotate``). ``result.to_json()`` is what
        ``kface identify --json`` prints.
        """
        from kface_cli.deploy.identify import identify

        single = _is_path(photos) or isinstance(photos, np.ndarray) or hasattr(photos, "convert")
        items = [photos] if single else list(photos)
        with use_tqdm():
            if all(_is_path(p) for p in items):
                return identify(items, self.path, self.model, **options)
            images = []
            for k, p in enumerate(items):
                image, _, label = _bgr(p, bgr=bgr, what=f"photo {k}")
                images.append(
                    (label if _is_path(p) else f"<array {k}>" if label == "<array>" else f"{label[:-1]} {k}>", image)
                )
            return identify([], self.path, self.model, images=images, **options)

    def add_embeddings(self, names: Sequence[str], vectors: np.ndarray, *, sources: Sequence[str] | None = None) -> int:
        """Enrol precomputed embeddings of this gallery's model: ``names[i]`` is who ``vectors[i]`` (N, D) is.

        Vectors are checked (finite, non-zero, the model's width) and normalised; rows are
        committed in batches (an interrupted call keeps every committed batch) and a row already
        in the gallery (same name and embedding) is skipped. Returns how many were added.
        100,000 512-d templates take seconds.
        """
        from kface_cli.face.imageio import check_identity_name
        from kface_cli.gallery.store import Gallery as Store
        from kface_cli.gallery.store import ModelInfo

        names = [check_identity_name(n) for n in names]  # "unknown" and empty names refused, as by add()
        return Store(self.path).append_vectors(names, vectors, ModelInfo.of(self.model), sources=sources).added

    def enroll_embeddings(self, file: str | Path, *, names_from: str = "auto") -> Any:
        """Enrol the file ``kface embed --out FILE.h5`` writes (its model must be this gallery's); see ``kface enroll --embeddings``."""
        from kface_cli.deploy.bulk import enroll_embeddings

        with use_tqdm():
            return enroll_embeddings(file, self.path, names_from=names_from, embedder=self.model)

    def identities(self) -> dict[str, int]:
        """``{name: number of templates}`` of everyone enrolled."""
        from kface_cli.gallery.store import Gallery as Store

        return Store(self.path).identities()

    def remove(self, *names: str) -> int:
        """Remove every template of these people; returns how many templates were removed."""
        from kface_cli.gallery.manage import manage_gallery

        report = manage_gallery(self.path, remove=names)
        return sum(r["templates"] for r in report["removed"])
