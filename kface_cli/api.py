"""kface from Python: a few small functions for notebooks and scripts.

::

    from kface_cli import api

    model = api.load_model("runs/demo")                 # a run, demo.onnx, an insightface backbone.pth...
    faces = api.detect("party.jpg")                     # [DetectedFace(box, score, points5, landmarks)]
    crops = api.align("party.jpg")                      # [(112, 112, 3) BGR uint8], largest face first
    vectors = api.embed(model, ["a.jpg", "b.jpg"])      # (2, D) unit vectors (largest face of each photo)
    result = api.verify(model, "a.jpg", "b.jpg")        # result.same, result.distance, result.threshold

    gallery = api.Gallery("gallery.h5", model)
    gallery.enroll("people/")                           # people/<name>.jpg or people/<name>/*.jpg
    found = gallery.identify("probe.jpg")               # found.images[0].faces[0].name

Every function here calls the same domain functions as the ``kface`` command, so results match
it exactly. Distances are squared L2 between unit vectors (``2 - 2 cos``; 0 = identical). Long
calls show ``tqdm.auto`` progress bars, which render as widgets in Jupyter; errors a user can fix
raise :class:`kface_cli.errors.KFaceError` with a message that says what to do.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.console import use_tqdm

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.deploy.compare import VerifyResult
    from kface_cli.deploy.enroll import EnrollResult
    from kface_cli.deploy.identify import IdentifyResult
    from kface_cli.embedding.embedder import Embedder
    from kface_cli.face.detector import DetectedFace
    from kface_cli.face.pipeline import AlignedFace

Photo = str | Path | np.ndarray  # a file, or a BGR uint8 image as OpenCV reads it

__all__ = ["Gallery", "align", "detect", "embed", "load_model", "verify"]


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


@functools.lru_cache(maxsize=4)
def _detector(landmarks: str, min_face: int | None) -> Any:
    from kface_cli.face.detector import get_detector

    return get_detector(landmarks, min_face=min_face) if min_face else get_detector(landmarks)  # type: ignore[arg-type]


def detect(photo: Photo, *, landmarks: str = "auto", min_face: int | None = None) -> list[DetectedFace]:
    """The faces in a photo, largest first: each with ``box`` (x, y, w, h), ``score`` and ``points5`` (5, 2).

    ``landmarks``: "auto" (a K-Face ``.txt`` beside the photo when there is one, else the
    detector), "detect" or "annotation". ``min_face``: smallest face searched for, in pixels.
    """
    return [found.face for found in _faces(photo, landmarks, min_face)]


def align(photo: Photo, *, landmarks: str = "auto", min_face: int | None = None) -> list[np.ndarray]:
    """Each face of a photo aligned to the ArcFace template: (112, 112, 3) BGR uint8 crops, largest first."""
    return [found.crop for found in _faces(photo, landmarks, min_face)]


def _faces(photo: Photo, landmarks: str, min_face: int | None) -> list[AlignedFace]:
    from kface_cli.face.pipeline import faces_in_image

    return faces_in_image(photo, _detector(landmarks, min_face))


def embed(
    model: Embedder | str | Path, faces: Photo | Sequence[str | Path] | np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Unit-length embeddings (``model``: a loaded model, or a path for :func:`load_model`).

    ``faces``: aligned crops ((112, 112, 3) or (N, 112, 112, 3) uint8, e.g. from :func:`align`):
    one row each; or one photo path: its largest face, shape (D,); or a list of photo paths:
    (N, D), a row of NaN where a photo has no face.
    """
    model = _model(model)
    if isinstance(faces, np.ndarray):
        return model.embed(faces, batch_size=batch_size)
    from kface_cli.embedding.photos import FaceLoader, embed_paths

    single = isinstance(faces, (str, Path))
    paths = [faces] if single else list(faces)
    with use_tqdm():
        vectors, ok = embed_paths(model, paths, loader=FaceLoader(), batch_size=batch_size)  # type: ignore[arg-type]
    vectors[~ok] = np.nan
    return vectors[0] if single else vectors


def verify(
    model: Embedder | str | Path, photo1: str | Path, photo2: str | Path, *, threshold: float | None = None
) -> VerifyResult:
    """Are two photos the same person? ``.same``, ``.distance``, ``.cosine``, ``.threshold`` (+ its source).

    ``model``: a loaded model, or a path or run name (loaded with :func:`load_model`).
    The threshold is ``threshold`` when given, else the model's calibrated one
    (``kface evaluate --save-threshold``), else 1.5 (cosine 0.25).
    """
    from kface_cli.deploy.compare import verify_photos

    return verify_photos(photo1, photo2, _model(model), threshold=threshold)


class Gallery:
    """Known people in an HDF5 gallery file (created on the first :meth:`enroll`), searched with FAISS."""

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

    def identify(self, photos: str | Path | Sequence[str | Path], **options: Any) -> IdentifyResult:
        """Name the faces in photos, folders or videos; ``result.images[i].faces[j].name`` ("unknown" if none).

        ``options`` as :func:`kface_cli.deploy.identify.identify` (``threshold``, ``top_k``, ``every``,
        ``aligned``, ``landmarks``, ``min_face``, ``annotate``). ``result.to_json()`` is what
        ``kface identify --json`` prints.
        """
        from kface_cli.deploy.identify import identify

        paths = [photos] if isinstance(photos, (str, Path)) else list(photos)
        with use_tqdm():
            return identify(paths, self.path, self.model, **options)

    def add_embeddings(self, names: Sequence[str], vectors: np.ndarray, *, sources: Sequence[str] | None = None) -> int:
        """Enrol precomputed embeddings of this gallery's model: ``names[i]`` is who ``vectors[i]`` (N, D) is.

        Vectors are checked (finite, non-zero, the model's width) and normalised; rows are
        committed in batches (an interrupted call keeps every committed batch) and a row already
        in the gallery (same name and embedding) is skipped. Returns how many were added.
        100,000 512-d templates take seconds.
        """
        from kface_cli.gallery.store import Gallery as Store
        from kface_cli.gallery.store import ModelInfo

        return Store(self.path).append_vectors(list(names), vectors, ModelInfo.of(self.model), sources=sources).added

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
