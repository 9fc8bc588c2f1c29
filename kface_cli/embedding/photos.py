"""Photos, pairs of photos and identity folders to embeddings and distances (evaluation protocols,
training-time validation, verify/embed and research all use them).

The expensive part of evaluation is embedding, so every protocol here:

- loads and embeds each **unique** image once (a val split reuses each image in many pairs);
- uses aligned 112x112 crops as they are (``kface crop`` output, ``.bin`` files) and sends any other
  photo through detection + alignment (``kface_cli.face.pipeline``), taking the largest face;
- embeds in batches through the :class:`~kface_cli.embedding.embedder.Embedder` (which applies flip-sum when the
  embedder was loaded with ``flip=True``).

A photo in which no face is found cannot be compared: its pairs get the largest possible distance
(4.0), so they count as rejected (an error for a same pair, correct for a different pair), and the
count is reported as ``n_failed_images``. That matches how a deployed system behaves.

For training-time validation, prepare the faces once with :func:`prepare_pairs` and call
:func:`embed_pairs` on the prepared object every epoch: images are not decoded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError
from kface_cli.formats.pairs import PairFaces

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.face.pipeline import AlignedFace

#: Distance given to pairs whose image has no detectable face (the maximum squared L2 of unit vectors).
FAILED_DISTANCE = 4.0
#: Images embedded per chunk (bounds memory; the embedder batches inside each chunk).
EMBED_CHUNK = 2048


class FaceLoader:
    """Loads one image as an aligned 112x112 face through :func:`kface_cli.face.pipeline.faces_in_image`.

    Aligned crops are used as they are, other photos are detected (``landmarks``) and the largest
    face is kept (``aligned=True``: every image is taken as an aligned crop). With ``sources`` (face path -> source photo, e.g. the val split's
    ``sources.csv``), each face is aligned again from its source photo: accuracy as deployed.
    ``outcomes`` records where each face's landmarks came from ("" when no face was found),
    ``low_light`` the faces found only in a contrast-enhanced copy of a dark photo.
    """

    def __init__(
        self, landmarks: str = "auto", sources: dict[Path, Path] | None = None, *, aligned: bool | None = None
    ):
        from kface_cli.face.detector import get_detector

        self.detector = get_detector(landmarks)  # mediapipe loads on the first photo that needs it
        self.sources = sources
        self.aligned = aligned  # True: every image is an aligned crop (--aligned); None: checked
        self.outcomes: dict[str, str] = {}
        self.low_light: set[str] = set()

    def __call__(self, path: Path) -> np.ndarray | None:
        """The aligned face (112,112,3) BGR uint8, or None when no face is found."""
        found = self.faces(path)
        return found[0].crop if found else None

    def faces(self, path: Path) -> list[AlignedFace]:
        """Every face of the image (largest first), recording the largest's landmark source."""
        import os

        from kface_cli.face.pipeline import faces_in_image

        photo = path
        if self.sources is not None:
            photo = self.sources.get(Path(os.path.normpath(Path(path).absolute())))  # type: ignore[assignment]
            if photo is None:
                raise InputError(
                    f"no source photo recorded for {path}",
                    hint="Run `kface split` again so that split/sources.csv lists every face.",
                )
        found = faces_in_image(photo, self.detector, size=FACE_SIZE, aligned=self.aligned)
        self.outcomes[str(path)] = found[0].face.landmarks if found else ""
        if found and found[0].face.low_light:
            self.low_light.add(str(path))
        return found


def _pair_fields(p: Any) -> tuple[Path, Path, bool]:
    if hasattr(p, "path1"):
        return Path(p.path1), Path(p.path2), bool(p.same)
    a, b, s = p
    return Path(a), Path(b), bool(s)


def prepare_pairs(
    pairs: Sequence[Any], *, loader: FaceLoader | None = None, description: str = "Loading faces"
) -> PairFaces:
    """Load each unique image of ``pairs`` once (``Pair`` objects or ``(path1, path2, same)`` tuples)."""
    from kface_cli.console import progress, warn

    if len(pairs) == 0:
        raise InputError("the pair list is empty", hint="Check the pairs file.")
    loader = loader or FaceLoader()
    index: dict[Path, int] = {}
    idx1 = np.empty(len(pairs), dtype=np.int64)
    idx2 = np.empty(len(pairs), dtype=np.int64)
    issame = np.empty(len(pairs), dtype=bool)
    for k, p in enumerate(pairs):
        a, b, s = _pair_fields(p)
        idx1[k] = index.setdefault(a, len(index))
        idx2[k] = index.setdefault(b, len(index))
        issame[k] = s
    names = list(index)
    faces = np.zeros((len(names), FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    failed = np.zeros(len(names), dtype=bool)
    with progress(description, total=len(names)) as bar:
        for i, path in enumerate(names):
            face = loader(path)
            if face is None:
                failed[i] = True
            else:
                faces[i] = face
            bar.advance()
    if failed.any():
        warn(
            f"no face found in {int(failed.sum())} of {len(names)} images (e.g. {names[int(np.argmax(failed))]}); their pairs count as rejected"
        )
    return PairFaces(faces=faces, idx1=idx1, idx2=idx2, issame=issame, names=[str(n) for n in names], failed=failed)


def embed_faces(
    embedder: Any, faces: np.ndarray, *, batch_size: int = 64, description: str = "Embedding"
) -> np.ndarray:
    """Embed (U,112,112,3) BGR faces in chunks with a progress bar. Returns (U, D) float32, unit rows."""
    from kface_cli.console import progress

    n = len(faces)
    out: list[np.ndarray] = []
    with progress(description, total=n) as bar:
        for start in range(0, n, EMBED_CHUNK):
            chunk = faces[start : start + EMBED_CHUNK]
            emb = np.asarray(embedder.embed(chunk, batch_size=batch_size), dtype=np.float32)
            assert emb.shape[0] == len(chunk), f"embedder returned {emb.shape[0]} embeddings for {len(chunk)} faces"
            out.append(emb)
            bar.advance(len(chunk))
    if not out:
        return np.zeros((0, getattr(embedder, "embedding_size", 0)), dtype=np.float32)
    return np.concatenate(out)


def pair_distances(emb: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """Squared L2 between ``emb[idx1]`` and ``emb[idx2]`` (as insightface: sum of squared differences)."""
    diff = emb[idx1] - emb[idx2]  # (N, D)
    return np.sum(np.square(diff), axis=1).astype(np.float64)


def embed_pairs(embedder: Any, pairs: Sequence[Any] | PairFaces, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(dist (N,) float64 squared L2, issame (N,) bool)`` for a pair list or prepared :class:`PairFaces`.

    Each unique image is embedded once. Pass a :class:`PairFaces` from :func:`prepare_pairs` to
    skip image loading (e.g. validation every epoch).
    """
    result = embed_pairs_detailed(embedder, pairs, batch_size=batch_size)
    return result.dist, result.issame


@dataclass
class EmbeddedPairs:
    dist: np.ndarray  # (N,) float64 squared L2 (FAILED_DISTANCE where an image has no face)
    issame: np.ndarray  # (N,) bool
    faces: PairFaces
    embeddings: np.ndarray  # (U, D) float32, one per unique image (zeros where failed)


def embed_pairs_detailed(embedder: Any, pairs: Sequence[Any] | PairFaces, batch_size: int = 64) -> EmbeddedPairs:
    """Like :func:`embed_pairs`, also returning the prepared faces and per-image embeddings."""
    pf = pairs if isinstance(pairs, PairFaces) else prepare_pairs(pairs)
    assert pf.failed is not None
    ok = ~pf.failed
    emb = np.zeros((len(pf.faces), max(int(getattr(embedder, "embedding_size", 0) or 0), 1)), dtype=np.float32)
    if ok.any():
        e = embed_faces(embedder, pf.faces[ok], batch_size=batch_size)
        if emb.shape[1] != e.shape[1]:
            emb = np.zeros((len(pf.faces), e.shape[1]), dtype=np.float32)
        emb[ok] = e
    dist = pair_distances(emb, pf.idx1, pf.idx2)
    bad = pf.failed[pf.idx1] | pf.failed[pf.idx2]
    dist[bad] = FAILED_DISTANCE
    return EmbeddedPairs(dist=dist, issame=pf.issame.copy(), faces=pf, embeddings=emb)


def embed_paths(
    embedder: Any,
    paths: Sequence[str | Path],
    *,
    loader: FaceLoader | None = None,
    cache: dict[str, np.ndarray] | None = None,
    batch_size: int = 64,
    description: str = "Loading faces",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed image files, reusing ``cache`` (path -> embedding) and filling it.

    Returns ``(emb (N, D) float32, ok (N,) bool)``; ``ok`` is False where no face was found.
    """
    from kface_cli.console import progress, warn

    loader = loader or FaceLoader()
    cache = cache if cache is not None else {}
    keys = [str(p) for p in paths]
    todo = [k for k in iter_unique(keys) if k not in cache]
    faces, loaded, failed = [], [], []
    with progress(description, total=len(todo) or None) if todo else _nullbar() as bar:
        for k in todo:
            face = loader(Path(k))
            if face is None:
                failed.append(k)
            else:
                faces.append(face)
                loaded.append(k)
            bar.advance()
    if failed:
        warn(f"no face found in {len(failed)} image(s) (e.g. {failed[0]}); they are left out")
    if faces:
        emb_new = embed_faces(embedder, np.stack(faces), batch_size=batch_size)
        cache.update(zip(loaded, emb_new))
    dim = next(iter(cache.values())).shape[0] if cache else max(int(getattr(embedder, "embedding_size", 1) or 1), 1)
    out = np.zeros((len(keys), dim), dtype=np.float32)
    ok = np.array([k in cache for k in keys], dtype=bool)
    for i, k in enumerate(keys):
        if ok[i]:
            out[i] = cache[k]
    return out, ok


# ============================================================================================
# Identification: gallery folder + probe folder
# ============================================================================================


def list_identity_folder(folder: str | Path) -> list[tuple[str, Path]]:
    """``(identity, image path)`` for every image under ``folder/<identity>/`` (sub-folders too), sorted."""
    from kface_cli.face.imageio import identity_photos

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}", hint="Pass a folder with one sub-folder per identity.")
    items = identity_photos(folder)
    if not items:
        raise InputError(f"no images in {folder}", hint="Expected <folder>/<identity>/<image>.jpg.")
    return items


@contextmanager
def _nullbar() -> Iterator[Any]:
    """A stand-in for a progress bar when there is nothing to do (no empty 0/0 bar)."""
    yield None


def iter_unique(values: Iterable[str]) -> list[str]:
    """Unique values in first-seen order."""
    return list(dict.fromkeys(values))
