"""Identification: name the faces in photos, folders, videos or a webcam against the gallery.

Each face travels: image -> :func:`kface_cli.face.pipeline.faces_in_image` (detector, 5 points,
alignment to 112x112; aligned crops as they are) -> embedder (unit
vector) -> index search (batched over many faces at once) -> the closest identities. The best one
is reported when its squared-L2 distance is below the threshold, otherwise ``unknown``.

Threshold (squared L2 between unit vectors, ``2 - 2 cos``): ``--threshold`` when given, else the
model's 1:N threshold (``kface evaluate --target-fpir F --save-threshold``: at most a share F of
people who are not enrolled get a name), else its 1:1 threshold (``--target-far``), else
:data:`~kface_cli.defaults.DEFAULT_THRESHOLD` (1.5, i.e. cosine 0.25, as the tutorial). The
result says which (``threshold_source``, ``threshold_detail``).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.choices import LandmarkMode
from kface_cli.defaults import DEFAULT_TOP_K, EMBED_BATCH_SIZE
from kface_cli.deploy import sources
from kface_cli.deploy.model import UNCALIBRATED, describe_model, resolve_embedder, resolve_threshold, uncalibrated_hint
from kface_cli.deploy.sources import Frame, expand_inputs
from kface_cli.embedding.embedder import Embedder, EmbedderOrLoader
from kface_cli.errors import InputError, KFaceError
from kface_cli.face.imageio import UNKNOWN_NAME
from kface_cli.gallery.index import Candidate, IndexKind, LoadedIndex, load_index, search_identities
from kface_cli.gallery.schema import ModelInfo
from kface_cli.gallery.store import Gallery

UNKNOWN = UNKNOWN_NAME  # never a person's name (kface_cli.face.imageio.check_identity_name)
#: Photos (or frames) whose faces are embedded and searched together.
FRAMES_PER_BATCH = 16


@dataclass(frozen=True)
class FaceMatch:
    box: tuple[float, float, float, float]  # x, y, w, h in the image
    score: float  # detection score (NaN for aligned crops)
    name: str  # best identity, or "unknown"
    distance: float  # squared L2 to the best identity's closest template
    candidates: list[Candidate]  # the next closest identities after the best

    def ranked(self) -> list[Candidate]:
        """The closest identities, best first, whether or not the best one was close enough to name."""
        return self.candidates if self.name == UNKNOWN else [Candidate(self.name, self.distance), *self.candidates]

    def to_json(self) -> dict[str, Any]:
        """One face (docs/json.md); ``name`` is null when nobody is close enough."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": None if not np.isfinite(self.score) else round(float(self.score), 4),
            "name": None if self.name == UNKNOWN else self.name,
            "distance": None if not np.isfinite(self.distance) else round(float(self.distance), 4),
            "candidates": [{"name": c.name, "distance": round(c.distance, 4)} for c in self.ranked()],
        }


@dataclass
class ImageResult:
    image: str  # photo path, or "<video>#frame=<n>" / "camera<k>#frame=<n>"
    faces: list[FaceMatch] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "face_count": len(self.faces),
            "faces": [f.to_json() for f in self.faces],
            "error": self.error,
        }


@dataclass
class IdentifyResult:
    images: list[ImageResult]
    threshold: float
    #: "given", "calibrated_identification" (1:N, FPIR), "calibrated_verification" (1:1, FAR) or "uncalibrated"
    threshold_source: str
    gallery: Path
    index: dict[str, Any]
    seconds: float = 0.0
    annotated: list[Path] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)  # Embedder.describe(): network, fingerprint...
    warnings: list[str] = field(default_factory=list)  # about the model (e.g. trained on synthetic faces)
    #: The threshold's origin in words, e.g. "calibrated 1:N at FPIR 1e-02".
    threshold_detail: str = ""

    @property
    def faces(self) -> int:
        return sum(len(i.faces) for i in self.images)

    def matched_any(self) -> bool:
        return any(f.name != UNKNOWN for i in self.images for f in i.faces)

    def to_json(self) -> dict[str, Any]:
        """What ``kface identify --json`` prints (docs/json.md): plain JSON types only."""
        from kface_cli.console import jsonable as plain

        return plain(
            {
                "threshold": self.threshold,
                "threshold_source": self.threshold_source,
                "threshold_detail": self.threshold_detail,
                "threshold_hint": uncalibrated_hint() if self.threshold_source == UNCALIBRATED else None,
                "model": self.model,
                "gallery": self.gallery,
                "index": self.index,
                "face_count": self.faces,
                "named_count": sum(1 for i in self.images for f in i.faces if f.name != UNKNOWN),
                "seconds": round(self.seconds, 3),
                "warnings": self.warnings,
                "images": [i.to_json() for i in self.images],
                "annotated": self.annotated,
            }
        )

    def data(self) -> tuple[list[str], list[list[Any]]]:
        """``--format csv|tsv`` and ``--csv FILE``: one row per face (docs/json.md).

        ``name`` is empty when nobody is close enough (``matched`` false); the ranked candidates
        (best first, named or not) fill ``candidate1``, ``distance1``, ``candidate2``... one
        column pair per rank. Photos without a face or that could not be read have no row (the
        JSON lists them, and a warning names them).
        """
        ranks = max((len(f.ranked()) for i in self.images for f in i.faces), default=1) or 1
        columns = ["image", "face", "x", "y", "w", "h", "score", "matched", "name", "distance", "cosine"]
        for k in range(1, ranks + 1):
            columns += [f"candidate{k}", f"distance{k}"]
        rows: list[list[Any]] = []
        for img in self.images:
            for n, f in enumerate(img.faces, 1):
                finite = bool(np.isfinite(f.distance))
                row: list[Any] = [img.image, n, *(round(float(v), 1) for v in f.box)]
                row += [round(float(f.score), 4) if np.isfinite(f.score) else None, f.name != UNKNOWN]
                row += [f.name if f.name != UNKNOWN else ""]
                row += [round(float(f.distance), 4) if finite else None]
                row += [round(1.0 - float(f.distance) / 2.0, 4) if finite else None]
                ranked = f.ranked()
                for k in range(ranks):
                    row += [ranked[k].name, round(float(ranked[k].distance), 4)] if k < len(ranked) else [None, None]
                rows.append(row)
        return columns, rows


def identify(
    paths: Sequence[str | Path],
    gallery_path: str | Path,
    embedder: EmbedderOrLoader,
    *,
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    every: int = 1,
    camera: int | None = None,
    max_frames: int | None = None,
    aligned: bool = False,
    landmarks: LandmarkMode | str = LandmarkMode.AUTO,
    min_face: int | None = None,
    index_kind: IndexKind | str = IndexKind.AUTO,
    annotate: str | Path | None = None,
    batch_size: int = EMBED_BATCH_SIZE,
    detector=None,
    workers: int | None = None,
    images: Sequence[np.ndarray | tuple[str, np.ndarray]] = (),
) -> IdentifyResult:
    """Identify every face in ``paths`` (photos, folders, videos), in ``images`` or in ``camera`` frames.

    Args:
        embedder: an :class:`~kface_cli.embedding.embedder.Embedder` (the gallery's model), or a function
            returning one (called after the inputs and the gallery are checked).
        threshold: squared-L2 distance below which the best identity is reported (None: the
            model's calibrated 1:N threshold, else its 1:1 one, else 1.5).
        top_k: identities listed per face (the best plus ``top_k - 1`` candidates).
        every: for videos and the camera, use one frame in ``every``.
        max_frames: stop a camera (or each video) after this many used frames.
        aligned: every input is an aligned square crop (the whole image is the face); otherwise
            the check of :func:`kface_cli.face.pipeline.faces_in_image` decides per image.
        min_face: smallest face to look for, in pixels (None: the detector's default, which
            searches zoomed tiles for small faces; e.g. 64 on webcam frames is several times faster).
        annotate: folder to write copies of the images with boxes and names drawn.
        detector: an object with ``detect(image, path=None)`` instead of ``get_detector(landmarks)``
            (called from ``workers`` threads at once).
        workers: threads reading and detecting photos (None: one per core; the camera uses one).
        images: photos already in memory, after ``paths``: BGR uint8 (H, W, 3) arrays, reported
            as ``<array K>`` (K from 0), or ``(label, array)`` pairs.
    """
    from kface_cli.console import info, progress, warn
    from kface_cli.parallel import map_ordered

    _at_least_one(top_k=top_k, every=every)
    # the inputs first, before the slow model load: typos fail fast
    frames, total, files = _frames(paths, camera, every, max_frames, annotate, images)
    gallery = Gallery(gallery_path)
    model = gallery.model()  # missing / corrupt gallery: fail before loading the model
    detector = default_detector(landmarks, min_face) if detector is None else detector
    early = _first_photo_early(frames, files, camera, workers, detector, aligned)
    embedder, loaded = _open_gallery(gallery, embedder, index_kind, model)
    per_identity = max(Counter(loaded.names).values())
    thr, thr_source, thr_detail = _identify_threshold(threshold, embedder)
    out_dir = _annotate_dir(annotate)

    def found_faces() -> Iterator[tuple[Frame, list]]:
        if early is not None:
            yield early.result()
        yield from map_ordered(
            lambda f: _find_faces(f, detector, aligned), frames, 1 if camera is not None else workers
        )

    started = time.perf_counter()  # after the model and index are loaded: the time per photo
    result = _new_result(gallery, loaded, embedder, (thr, thr_source, thr_detail))
    warned_glyphs: set[str] = set()
    batch: list[tuple[Frame, list[tuple[tuple[float, float, float, float], float, np.ndarray]]]] = []

    def flush() -> None:
        ranked = _rank(batch, embedder, loaded, batch_size=batch_size, top_k=top_k, per_identity=per_identity)
        k = 0
        for frame, found in batch:
            res = ImageResult(frame.label, error=frame.error)
            res.faces = [_match(box, score, ranked[k + j], thr) for j, (box, score, _) in enumerate(found)]
            k += len(found)
            result.images.append(res)
            if camera is not None:  # live: a line per frame as it comes
                info(f"{res.image}: " + (", ".join(f"{f.name} {f.distance:.2f}" for f in res.faces) or "no face"))
            if out_dir is not None and frame.image is not None:
                result.annotated.append(_write_annotated(frame, res, out_dir, warned_glyphs))
        batch.clear()

    with progress("Identifying", total=total) as bar:
        try:
            for frame, found in found_faces():
                if frame.error:
                    warn(f"{frame.label}: {frame.error}: skipped")
                batch.append((frame, found))
                if len(batch) >= (1 if camera is not None else FRAMES_PER_BATCH):
                    flush()
                bar.advance()
        except KeyboardInterrupt:
            if camera is None:
                raise
        flush()
    result.seconds = time.perf_counter() - started
    return result


def _first_photo_early(
    frames: Iterator[Frame], files: list[Path], camera: int | None, workers: int | None, detector, aligned: bool
):
    """The first photo read and searched while the model and the gallery load (both release the
    GIL for most of it): one photo, whole process, 0.7 s -> see docs/performance.md. None when
    there is no such photo (camera, a video first, one worker)."""
    from kface_cli.parallel import submit

    if camera is None and workers != 1 and files and not sources.is_video(files[0]):
        return submit(_find_faces, next(frames), detector, aligned, workers=workers)
    return None


def _new_result(
    gallery: Gallery, loaded: LoadedIndex, embedder: Embedder, threshold: tuple[float, str, str]
) -> IdentifyResult:
    """The result, before any face: threshold, gallery, index and model as the JSON reports them."""
    from kface_cli.dataset.provenance import warn_if_synthetic

    thr, thr_source, thr_detail = threshold
    return IdentifyResult(
        [],
        thr,
        thr_source,
        gallery.path,
        {"kind": loaded.index.kind.value, "templates": len(loaded.index), **loaded.index.params},
        model=describe_model(embedder),
        warnings=warn_if_synthetic(embedder.metadata, embedder.source),
        threshold_detail=thr_detail,
    )


def _rank(
    batch: list, embedder: Embedder, loaded: LoadedIndex, *, batch_size: int, top_k: int, per_identity: int
) -> list[list[Candidate]]:
    """The ranked candidates of every face found in ``batch``'s frames, in order."""
    faces = [crop for _, found in batch for (_, _, crop) in found]
    if not faces:
        return []
    emb = embedder.embed(np.stack(faces), batch_size=batch_size)  # (F, D)
    return search_identities(loaded, emb, top_k=top_k, templates_per_identity=per_identity)


def _frames(
    paths: Sequence[str | Path],
    camera: int | None,
    every: int,
    max_frames: int | None,
    annotate: str | Path | None,
    images: Sequence[np.ndarray | tuple[str, np.ndarray]] = (),
) -> tuple[Iterator[Frame], int | None, list[Path]]:
    """The frames to identify faces in (photos, videos, then ``images`` in memory, or the camera's),
    how many there are (None: not known in advance) and the files among them. The inputs are checked (the files
    listed, the camera opened, ``--annotate`` not among them) now; frames are read later."""
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}", hint="Leave it out to read every frame.")
    if camera is not None:
        capture = sources.open_capture(camera)
        return iter(sources.video_frames(camera, every, f"camera{camera}", max_frames, cap=capture)), max_frames, []
    files = expand_inputs(paths) if paths or not len(images) else []
    if annotate is not None:
        from kface_cli.atomic import check_output_folder

        check_output_folder(annotate, inputs=files, option="--annotate")
    arrays = [
        Frame(item[0], item[1], None, f"array_{k}.jpg")
        if isinstance(item, tuple)
        else Frame(f"<array {k}>", item, None, f"array_{k}.jpg")
        for k, item in enumerate(images)
    ]
    frames = itertools.chain(sources.photo_frames(files, every, max_frames), arrays)
    total = len(files) + len(arrays) if not any(sources.is_video(f) for f in files) else None
    return frames, total, files


def default_detector(landmarks: LandmarkMode | str, min_face: int | None):
    """The face detector for ``landmarks`` (mediapipe loads only when a photo needs it)."""
    from kface_cli.face.detector import get_detector

    return get_detector(landmarks, min_face=min_face) if min_face else get_detector(landmarks)


def _open_gallery(
    gallery: Gallery, embedder: EmbedderOrLoader, index_kind: IndexKind | str, model: ModelInfo | None = None
) -> tuple[Embedder, LoadedIndex]:
    """The model (loaded now, checked against the gallery's: ``model`` when just read) and the
    search index; an empty gallery is an error."""
    embedder = resolve_embedder(embedder)
    gallery.check_model(ModelInfo.of(embedder), ours=model)
    loaded = load_index(gallery, index_kind)
    if not loaded.names:
        raise InputError(f"gallery {gallery.path} is empty", hint="Enroll people first with `kface enroll DIR`.")
    return embedder, loaded


def _at_least_one(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _identify_threshold(threshold: float | None, embedder: Embedder) -> tuple[float, str, str]:
    """:func:`~kface_cli.deploy.model.resolve_threshold`, with a hint when only a 1:1 threshold was calibrated."""
    from kface_cli.console import info

    thr, thr_source, thr_detail = resolve_threshold(threshold, embedder)
    if thr_source == "calibrated_verification":
        info(
            "using the model's 1:1 threshold: for identification against a gallery, calibrate a 1:N one with "
            "`kface evaluate --target-fpir 1e-2 --save-threshold`"
        )
    return thr, thr_source, thr_detail


def _annotate_dir(annotate: str | Path | None) -> Path | None:
    """The ``--annotate`` folder, created (None when not asked for)."""
    if annotate is None:
        return None
    from kface_cli.atomic import ensure_dir

    out_dir = Path(annotate)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--annotate needs a folder, got a file: {out_dir}")
    ensure_dir(out_dir)
    return out_dir


def _match(box: tuple[float, float, float, float], score: float, cands: list[Candidate], thr: float) -> FaceMatch:
    """The face named after its best candidate when that is nearer than ``thr``, else unknown."""
    best = cands[0] if cands else None
    if best is not None and best.distance < thr:
        return FaceMatch(box, score, best.name, best.distance, cands[1:])
    return FaceMatch(box, score, UNKNOWN, best.distance if best else float("inf"), cands)


def _find_faces(
    frame: Frame, detector, aligned: bool
) -> tuple[Frame, list[tuple[tuple[float, float, float, float], float, np.ndarray]]]:
    """Read a photo (unless it is a video frame), then :func:`_faces_of`; errors go to ``frame.error``."""
    from kface_cli.face.imageio import read_image

    found = []
    try:
        if frame.image is None and frame.path is not None:
            frame.image = read_image(frame.path)
        found = _faces_of(frame, detector, aligned)
    except KFaceError as e:
        frame.error = e.message
    return frame, found


def _faces_of(
    frame: Frame, detector, aligned: bool
) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
    """(box, score, aligned 112x112 crop) of every face in the frame, largest first."""
    from kface_cli.face.pipeline import faces_in_image

    assert frame.image is not None
    found = faces_in_image(frame.image, detector, aligned=aligned or None, path=frame.path)
    return [(tuple(float(v) for v in f.face.box), float(f.face.score), f.crop) for f in found]


def _write_annotated(frame: Frame, res: ImageResult, out_dir: Path, warned: set[str]) -> Path:
    from kface_cli.console import warn
    from kface_cli.deploy.draw import draw_faces, missing_glyphs
    from kface_cli.face.imageio import write_image

    for f in res.faces:
        if not warned and missing_glyphs(f.name):
            warned.add(f.name)  # once per run
            warn(
                f"no installed font can draw some names (e.g. {f.name!r}): the annotated images show placeholder boxes "
                "for those characters (install a font that has them, e.g. fonts-noto-cjk for Korean; JSON/CSV hold the exact names)"
            )
    target = out_dir / frame.annotate_name
    assert frame.image is not None
    write_image(target, draw_faces(frame.image, res.faces))
    return target


def table_rows(result: IdentifyResult) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the results table (one row per face; images without faces too)."""
    from rich.text import Text

    from kface_cli.console import display_path, printable

    columns = ["image", "face", "box x,y,w,h", "name", "distance", "candidates (name:distance)"]
    rows: list[list[Any]] = []
    for img in result.images:
        if img.error:
            rows.append([img.image, "-", "-", Text(printable(img.error), "red"), None, ""])
            continue
        if not img.faces:
            rows.append([img.image, "-", "-", Text("no face", "dim"), None, ""])
        for k, f in enumerate(img.faces, 1):
            box = ",".join(f"{v:.0f}" for v in f.box)  # one word: never folded inside
            name = f.name if f.name != UNKNOWN else Text(UNKNOWN, "yellow")
            cands = ", ".join(f"{c.name}:{c.distance:.3f}" for c in f.ranked())
            image = display_path(img.image) if "#" not in img.image else img.image
            rows.append([image, k, box, name, f.distance if np.isfinite(f.distance) else None, cands])
    return columns, rows


def write_csv(result: IdentifyResult, path: str | Path) -> Path:
    """``--csv FILE``: the same columns and rows as ``--format csv`` (:meth:`IdentifyResult.data`)."""
    from kface_cli.atomic import write_text
    from kface_cli.console import data_text

    write_text(path, data_text(*result.data()))
    return Path(path)
