"""Enrolment: photos of known people in, face templates in the gallery out.

Folder layouts (both may be mixed in one folder)::

    people/김철수.jpg            one photo per person: the name is the file stem
    people/김철수/*.jpg          several photos per person: the name is the folder
                                 (photos in sub-folders count too, e.g. K-Face's raw tree)

Photos proven to be aligned crops (``kface crop`` output, ``faces/<Res>/<ID>/*.jpg``, or a 112/224 px
square whose face the detector finds on the ArcFace template) are used as they are
(:func:`kface_cli.face.pipeline.faces_in_image`, the path every stage shares); ``aligned=True``
does so for any square photo. Every other photo goes through the detector.

Every photo is read once, hashed (SHA-256 of its bytes) and skipped when the gallery already
holds that hash: running the same enrolment twice adds nothing. A photo with no face, or one that
cannot be read, is reported and skipped; with several faces the largest is used and a warning
names the photo. Templates are committed in batches of ``batch_size`` photos, so an interrupted
run keeps everything committed before it (see :mod:`kface_cli.gallery.store`).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.choices import LandmarkMode, PerIdentity
from kface_cli.defaults import EMBED_BATCH_SIZE, ENROLL_BATCH_SIZE
from kface_cli.deploy.model import describe_model, resolve_embedder
from kface_cli.errors import InputError, KFaceError
from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash


class Status(str, Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"  # content hash already in the gallery
    NO_FACE = "no face"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path


@dataclass(frozen=True)
class PhotoOutcome:
    name: str
    path: Path
    status: Status
    note: str = ""  # e.g. "3 faces: used the largest"


@dataclass(frozen=True)
class IdentitySummary:
    name: str
    photos: int
    added: int
    duplicates: int
    skipped: int  # no face or unreadable
    templates: int  # in the gallery after the run


@dataclass
class EnrollResult:
    gallery: Path
    model: dict[str, Any]
    per_identity: str
    identities: list[IdentitySummary]
    problems: list[PhotoOutcome] = field(default_factory=list)  # skipped photos and warnings
    photos: int = 0
    added_templates: int = 0
    removed_templates: int = 0  # --replace
    seconds: float = 0.0

    @property
    def photos_per_second(self) -> float:
        return self.photos / self.seconds if self.seconds > 0 else float("nan")

    def totals(self) -> dict[str, int]:
        return {
            "photos": self.photos,
            "added": sum(i.added for i in self.identities),
            "duplicates": sum(i.duplicates for i in self.identities),
            "skipped": sum(i.skipped for i in self.identities),
            "templates_added": self.added_templates,
            "templates_removed": self.removed_templates,
        }

    def to_json(self) -> dict[str, Any]:
        """What ``kface enroll --json`` prints (docs/json.md): plain JSON types only."""
        from kface_cli.console import jsonable as plain

        return plain(
            {
                **self.totals(),
                "gallery": self.gallery,
                "model": self.model,
                "per_identity": self.per_identity,
                "seconds": round(self.seconds, 3),
                "identities": self.identities,
                "problems": [
                    {"path": p.path, "name": p.name, "status": p.status.value, "note": p.note} for p in self.problems
                ],
            }
        )


def find_photos(folder: str | Path) -> list[Photo]:
    """Photos of ``folder`` with their identity names (layouts in the module docstring), sorted.

    The same layouts as ``kface crop`` (:func:`kface_cli.face.imageio.identity_photos`); a name
    that cannot be a person's ("unknown", empty) is an :class:`InputError`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(
            f"folder not found: {folder}", hint="Pass a folder of photos: DIR/<name>.jpg or DIR/<name>/*.jpg."
        )
    if not folder.is_dir():
        raise InputError(f"expected a folder of photos, got a file: {folder}", hint="Pass the folder that holds it.")
    from kface_cli.face.imageio import identity_photos

    photos = [Photo(name, path) for name, path in identity_photos(folder)]
    if not photos:
        raise InputError(
            f"no photos found in {folder}",
            hint="Expected DIR/<name>.jpg or DIR/<name>/*.jpg (JPEG, PNG, BMP, WebP, TIFF).",
        )
    return photos


@dataclass
class _Pending:
    photo: Photo
    face: np.ndarray  # (112, 112, 3) BGR uint8 aligned
    digest: str
    box: tuple[float, float, float, float]
    score: float


def enroll_folder(
    folder: str | Path,
    gallery_path: str | Path,
    embedder,
    *,
    aligned: bool = False,
    per_identity: PerIdentity | str = PerIdentity.ALL,
    replace: bool = False,
    landmarks: LandmarkMode | str = LandmarkMode.AUTO,
    min_face: int | None = None,
    batch_size: int = ENROLL_BATCH_SIZE,
    detector=None,
    update_index: bool = True,
    workers: int | None = None,
) -> EnrollResult:
    """Enroll every person in ``folder`` into the gallery (created if missing).

    Args:
        embedder: a :class:`kface_cli.embedding.embedder.Embedder`, or a function returning one (called once
            the folder has been checked, so a typo is reported before the slow model load). The
            gallery must have been made with the same model (fingerprint), else :class:`ModelMismatchError`.
        aligned: every photo is an aligned square crop (skip detection); otherwise the one rule of
            the check of :func:`kface_cli.face.pipeline.faces_in_image` decides per photo.
        per_identity: ``all`` keeps one template per photo (best accuracy, more rows), ``mean``
            one normalised mean per person and run (smallest gallery; committed as soon as all
            of that person's photos are embedded).
        replace: swap the templates of the people found in ``folder`` for the new ones, in one
            transaction at the end; a person without a usable new photo keeps the old templates
            (and when nobody has one, :class:`InputError` and the gallery is unchanged).
        landmarks: ``auto`` | ``detect`` | ``annotation`` (see :func:`kface_cli.face.detector.get_detector`).
        min_face: smallest face to look for, in pixels (None: the detector's default).
        batch_size: photos embedded and committed together (a crash loses at most one batch).
        detector: an object with ``detect(image, path=None)`` to use instead of ``get_detector``
            (called from ``workers`` threads at once).
        update_index: rebuild the search index at the end, so the first identify is fast.
        workers: threads reading, detecting and aligning photos (None: one per core).
    """
    from kface_cli.console import progress, warn
    from kface_cli.parallel import map_ordered

    mode = PerIdentity.parse(per_identity, "--per-identity")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    photos = find_photos(folder)
    embedder = resolve_embedder(embedder)
    started = time.perf_counter()  # after the model load: throughput is about the photos
    gallery = Gallery(gallery_path)
    model = ModelInfo.of(embedder)
    if gallery.exists():
        gallery.check_model(model)
    removed = 0
    # --replace is one transaction: the new templates are staged here and swapped for the old ones
    # in one rewrite at the end, and only for people who got some (an interrupted run changes nothing)
    replaced = sorted({p.name for p in photos}) if replace else []
    staged: list[Template] = []
    before = gallery.identities() if replace and gallery.exists() else {}
    if replace and gallery.exists():
        rows = gallery.read(embeddings=False, details=True)
        others = set(replaced)
        known = {h for n, h in zip(rows.names, rows.hashes or []) if n not in others}
    else:
        known = gallery.hashes() if gallery.exists() and mode is PerIdentity.ALL else set()
    if mode is PerIdentity.ALL and not replace:  # grow the file once, to the size this run can reach
        gallery.reserve((gallery.facts().templates if gallery.exists() else 0) + len(photos), model)
    if detector is None:  # mediapipe loads only if a photo needs it
        from kface_cli.face.detector import get_detector

        detector = get_detector(landmarks, min_face=min_face) if min_face else get_detector(landmarks)

    counts: dict[str, dict[str, int]] = {}
    problems: list[PhotoOutcome] = []
    pending: list[_Pending] = []
    added_templates = 0
    mean_groups: dict[str, list[tuple[np.ndarray, str]]] = {}  # name -> [(embedding, digest)]

    def count(name: str, key: str, n: int = 1) -> None:
        c = counts.setdefault(name, {"photos": 0, "added": 0, "duplicates": 0, "skipped": 0})
        c[key] += n

    remaining = Counter(p.name for p in photos)  # photos not yet processed, per identity

    def commit_means() -> None:
        """Mean mode: one template per identity whose photos are all embedded."""
        nonlocal added_templates
        done = [name for name in mean_groups if remaining[name] == 0]
        if not done:
            return
        templates = []
        for name in done:
            items = mean_groups.pop(name)
            mean = np.mean([e for e, _ in items], axis=0)  # (D,)
            mean = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
            digest = hashlib.sha256("\n".join(sorted(d for _, d in items)).encode()).hexdigest()
            own = [p.path for p in photos if p.name == name]
            source = str(own[0]) if len(own) == 1 else str(own[0].parent)
            templates.append(Template(name, mean, source, digest))
        if replace:
            staged.extend(templates)
            return
        result = gallery.append(templates, model)
        added_templates += result.added
        for t in templates:
            if t.source in result.duplicates:  # the same photos were enrolled before: a no-op
                c = counts[t.name]
                c["duplicates"] += c["added"]
                c["added"] = 0

    def commit() -> None:
        nonlocal added_templates
        if not pending:
            commit_means()
            return
        faces = np.stack([p.face for p in pending])  # (B, 112, 112, 3)
        emb = embedder.embed(faces, batch_size=max(1, min(batch_size, EMBED_BATCH_SIZE)))  # (B, D) unit
        if mode is PerIdentity.MEAN:
            for p, e in zip(pending, emb):
                mean_groups.setdefault(p.photo.name, []).append((e, p.digest))
                count(p.photo.name, "added")
        else:
            templates = [
                Template(p.photo.name, e, str(p.photo.path), p.digest, p.box, p.score) for p, e in zip(pending, emb)
            ]
            if replace:
                staged.extend(templates)
                for p in pending:
                    count(p.photo.name, "added")
                pending.clear()
                return
            result = gallery.append(templates, model)
            added_templates += result.added
            dup = set(result.duplicates)
            for p in pending:
                count(p.photo.name, "duplicates" if str(p.photo.path) in dup else "added")
        pending.clear()
        if mode is PerIdentity.MEAN:
            commit_means()

    with progress("Enrolling", total=len(photos)) as bar:
        for photo, (outcome, ready) in map_ordered(
            lambda p: (p, _prepare(p, aligned, detector, known)), photos, workers
        ):
            count(photo.name, "photos")
            if ready is not None and ready.digest in known:  # the same photo earlier in this run
                outcome, ready = PhotoOutcome(photo.name, photo.path, Status.DUPLICATE), None
            if ready is not None:
                known.add(ready.digest)
                pending.append(ready)
            remaining[photo.name] -= 1
            if outcome is not None:
                if outcome.status is Status.DUPLICATE:
                    count(photo.name, "duplicates")
                elif outcome.status is Status.ADDED:  # added with a note (several faces)
                    problems.append(outcome)
                    warn(f"{photo.path}: {outcome.note}")
                else:
                    count(photo.name, "skipped")
                    problems.append(outcome)
                    what = (
                        outcome.note
                        if str(photo.path) in outcome.note
                        else f"{photo.path}: {outcome.status.value}" + (f" ({outcome.note})" if outcome.note else "")
                    )
                    warn(f"{what}: skipped")
            if len(pending) >= batch_size:
                commit()
            bar.advance()
        commit()

    if replace:
        removed, added_templates = _swap_in(gallery, replaced, staged, before, model, folder)
    in_gallery = gallery.identities() if gallery.exists() else {}
    summaries = [
        IdentitySummary(name, c["photos"], c["added"], c["duplicates"], c["skipped"], in_gallery.get(name, 0))
        for name, c in sorted(counts.items())
    ]
    from kface_cli.gallery.index import NUMPY_EXACT_MAX, load_index

    if update_index and sum(in_gallery.values()) > NUMPY_EXACT_MAX:
        load_index(gallery)  # build and save the FAISS index identify will load (small galleries need none)
    return EnrollResult(
        gallery=gallery.path,
        model=describe_model(embedder),
        per_identity=mode.value,
        identities=summaries,
        problems=problems,
        photos=len(photos),
        added_templates=added_templates,
        removed_templates=removed,
        seconds=time.perf_counter() - started,
    )


def _swap_in(
    gallery: Gallery,
    replaced: list[str],
    staged: list[Template],
    before: dict[str, int],
    model: ModelInfo,
    folder: str | Path,
) -> tuple[int, int]:
    """``--replace``'s commit: swap the old templates of everyone with new ones, in one rewrite.

    People without a new template keep their old ones (a warning says so); when nobody has any,
    nothing changes and the command fails. Returns (templates removed, templates added).
    """
    from kface_cli.console import warn

    fresh = {t.name for t in staged}
    kept = [n for n in replaced if n in before and n not in fresh]
    if kept and not fresh:
        names = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        raise InputError(
            f"--replace found no usable face for {names} in {folder}: the gallery is unchanged "
            f"({sum(before[n] for n in kept)} templates kept)",
            hint="Check the photos (the warnings above say why each was skipped), then run it again.",
        )
    for n in kept:
        warn(f"--replace: no photo of {n} gave a face, so its {before[n]} templates are kept")
    if not staged:
        return 0, 0
    return gallery.replace(sorted(fresh), staged, model), len(staged)


def _prepare(photo: Photo, aligned: bool, detector, known: set[str]) -> tuple[PhotoOutcome | None, _Pending | None]:
    """Read, hash, detect and align one photo (on a worker thread): the face to queue, or why not.

    A photo whose hash is in ``known`` is not detected; the caller queues the face and adds its
    hash to ``known``, in photo order (a photo met twice in one run counts once).
    """
    from kface_cli.face.imageio import UnreadableImageError, decode_image, read_file
    from kface_cli.face.pipeline import faces_in_image

    try:
        data = read_file(photo.path)
    except InputError as e:  # a FIFO or device named like a photo, a vanished or unreadable file
        return PhotoOutcome(photo.name, photo.path, Status.UNREADABLE, e.message), None
    digest = content_hash(data)
    if digest in known:
        return PhotoOutcome(photo.name, photo.path, Status.DUPLICATE), None
    try:
        image = decode_image(data, photo.path)
        found = faces_in_image(image, detector, aligned=aligned or None, path=photo.path)
    except UnreadableImageError as e:
        return PhotoOutcome(photo.name, photo.path, Status.UNREADABLE, e.message), None
    except KFaceError as e:  # e.g. --landmarks annotation and no .txt beside this photo
        return PhotoOutcome(photo.name, photo.path, Status.NO_FACE, e.message), None
    if not found:
        return PhotoOutcome(photo.name, photo.path, Status.NO_FACE), None
    largest = found[0]  # faces come largest first
    ready = _Pending(photo, largest.crop, digest, tuple(float(v) for v in largest.face.box), float(largest.face.score))
    if len(found) > 1:
        return PhotoOutcome(photo.name, photo.path, Status.ADDED, f"{len(found)} faces: used the largest"), ready
    return None, ready


def summary_rows(result: EnrollResult) -> tuple[list[str], list[Sequence[Any]]]:
    """Columns and rows of the summary table (the CLI prints them)."""
    from rich.text import Text

    columns = ["identity", "photos", "added", "duplicates", "skipped", "templates in gallery"]
    rows = [[i.name, i.photos, i.added, i.duplicates, i.skipped, i.templates] for i in result.identities]
    t = result.totals()
    rows.append(
        [
            Text("total", "bold"),
            t["photos"],
            t["added"],
            t["duplicates"],
            t["skipped"],
            sum(i.templates for i in result.identities),
        ]
    )
    return columns, rows


def check_embeddings(vectors: Any, embedding_size: int, *, what: str = "embedding") -> np.ndarray:
    """``vectors`` ((D,) or (N, D) real numbers) as (N, D) float32 unit rows, or an :class:`InputError`
    that says what was expected: the model's size D, finite values, no zero vector. Every template
    given as a vector (``Gallery.add``, bulk additions) passes through here."""
    arr = np.asarray(vectors)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} must be an array of numbers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != embedding_size:
        raise InputError(
            f"{what} must have shape ({embedding_size},) or (N, {embedding_size}) for this model, got {np.shape(vectors)}",
            hint="Make embeddings with the gallery's model (api.embed).",
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(
            f"{what} holds NaN or infinite values", hint="A row of NaN is a photo where no face was found."
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise InputError(f"{what} holds a zero vector, which has no direction to compare")
    return (arr / norms).astype(np.float32)


@dataclass(frozen=True)
class AddResult:
    """One template added to a gallery by :func:`add_template`."""

    gallery: Path
    name: str
    source: str
    added: bool  # False: this very template was already in the gallery (a no-op)
    templates: int  # the person's templates in the gallery now
    box: tuple[float, float, float, float] | None = None  # the face used, for a photo
    face_count: int | None = None  # faces found in the photo

    def to_json(self) -> dict[str, Any]:
        from kface_cli.console import jsonable as plain

        return plain(
            {
                "gallery": self.gallery,
                "name": self.name,
                "source": self.source,
                "added": self.added,
                "templates": self.templates,
                "box": [round(float(v), 1) for v in self.box] if self.box is not None else None,
                "face_count": self.face_count,
            }
        )


def add_template(
    gallery_path: str | Path,
    name: str,
    embedder: Any,
    *,
    face: np.ndarray | None = None,
    embedding: Any = None,
    source: str = "",
    box: tuple[float, float, float, float] | None = None,
    score: float = float("nan"),
    face_count: int | None = None,
) -> AddResult:
    """Add one template of ``name``: an aligned ``face`` (112x112x3 BGR uint8) embedded with
    ``embedder``, or an ``embedding`` made with it (checked by :func:`check_embeddings`).

    The name is checked (:func:`kface_cli.face.imageio.check_identity_name`); the template's key is
    the SHA-256 of the face's pixels (of the name and vector for an embedding, as
    ``Gallery.append_vectors`` keys bulk vectors), so adding the same one twice is a no-op.
    """
    from kface_cli.face.imageio import check_identity_name

    name = check_identity_name(name)
    if (face is None) == (embedding is None):
        raise InputError("add one template: a face or an embedding")
    model = ModelInfo.of(embedder)
    gallery = Gallery(gallery_path)
    if gallery.exists():
        gallery.check_model(model)
    if face is not None:
        vector = embedder.embed(np.asarray(face)[None])[0]
        digest = hashlib.sha256(b"face:" + np.ascontiguousarray(face).tobytes()).hexdigest()
        box_value = tuple(float(v) for v in box) if box is not None else (float("nan"),) * 4
        result = gallery.append([Template(name, vector, source, digest, box_value, float(score))], model)  # type: ignore[arg-type]
    else:  # the path of bulk vectors (Gallery.add_embeddings, enroll --embeddings): the same checks and key
        vector = check_embeddings(embedding, model.embedding_size)[0]
        result = gallery.append_vectors([name], vector[None], model, sources=[source])
    return AddResult(gallery.path, name, source, result.added == 1, gallery.identities().get(name, 0), box, face_count)
