"""``kface crop``: turn photos into 112x112 aligned face crops, with a manifest.

Sources
-------
A K-Face extraction (default: the workspace's ``raw/<Res>``)
    ``<ID>/<S>/<L>/<E>/<C>.jpg`` with its ``.txt`` annotation; writes
    ``faces/<Res>/<ID>/<ID>_<S>_<L>_<E>_<C>.jpg``.
Any folder of photos, the layouts ``kface enroll`` reads
    ``SRC/<name>/**/*.jpg|png|bmp|webp|tif`` (a sub-folder per person, sub-folders allowed, names
    in any script) and ``SRC/<name>.jpg`` (one photo per person, named by the file); writes
    ``faces/<SRC name>/<name>/<sub__folders__stem>.jpg`` (a suffix other than .jpg is kept in the
    name, ``a.png`` -> ``a_png.jpg``, so two files never share a crop). "unknown" and empty names
    are refused, as enroll refuses them.

Either way ``manifest.csv`` lists every photo: the crop, the K-Face codes (when there are), the
source, where its landmarks came from and the detector's score, how many faces were found, the
method and a status. ``kface split`` and ``kface train`` read the result.

Landmarks (``landmarks``)
-------------------------
``annotation``: the K-Face annotation beside the photo; ``detect``: the face detector, exactly as
``kface identify`` runs it; ``auto`` (default): the annotation when there is one, else the
detector. Every photo goes through :func:`kface_cli.face.pipeline.faces_in_image`, the path enroll,
identify and evaluate use: the 5-point ArcFace alignment, a square face-box crop for degenerate
(profile) points, an aligned crop (square, 112 or 224 px) used as it is. When several faces are
found the largest is used and the manifest says how many there were. When the detector finds no
face in a K-Face photo that has an annotation, the annotation is used (``annotation-fallback``);
otherwise the photo is counted as ``no-face``.

``mode="box"`` reproduces the original tutorial's crop instead: the face box (annotation line 8,
or the detector's box) cut out and resized, grown by ``margin`` on every side, optionally squared.

Photos that cannot be read, have no face or a missing/malformed annotation are skipped, counted
and listed in the manifest with their reason; they never stop the run. A re-run with the same
settings skips every photo already cropped (the manifest is saved as the work goes, so an
interrupted run resumes too); other settings redo everything.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kface_cli.choices import CropMode, LandmarkMode
from kface_cli.dataset import codes as kc
from kface_cli.defaults import CROP_SETTINGS_FILE, FACE_SIZE, auto_workers
from kface_cli.errors import InputError, KFaceError
from kface_cli.workspace import DEFAULT_RESOLUTION, MANIFEST, Workspace, normalise_resolution

if TYPE_CHECKING:
    from kface_cli.face.detector import Detector

MANIFEST_COLUMNS = [
    "path",
    "id",
    "acc",
    "light",
    "expr",
    "cam",
    "source",
    "landmarks",
    "score",
    "faces",
    "method",
    "status",
    "detail",
]
#: Beside the manifest: the settings and source of the crops (a re-run with the same ones resumes).
SETTINGS_FILE = CROP_SETTINGS_FILE
JPEG_QUALITY = 95
#: Seconds between manifest saves while cropping (what an interrupted run resumes from).
SAVE_EVERY_S = 5.0
CODE_KEYS = ("acc", "light", "expr", "cam")
#: ``CropResult.examples`` key of photos where several faces were found (the largest was used).
SEVERAL_FACES = "several faces"


class Status(str, enum.Enum):
    ok = "ok"
    missing_annotation = "missing-annotation"
    malformed_annotation = "malformed-annotation"
    unreadable_image = "unreadable-image"
    no_face = "no-face"


MAX_MARGIN = 2.0  # fraction of the face box added on each side
MAX_SIZE = 1024  # output crop side, pixels


@dataclass(frozen=True)
class CropConfig:
    mode: CropMode = CropMode.ALIGN
    size: int = FACE_SIZE
    margin: float = 0.0
    square: bool = False
    landmarks: LandmarkMode = LandmarkMode.AUTO


@dataclass(frozen=True)
class _Item:
    ident: str
    codes: dict  # K-Face codes (empty for other photos)
    path: Path
    source: str  # relative to the source root
    out: str  # relative to the output folder


@dataclass
class CropRecord:
    path: str  # output, relative to the output folder ("" when not written)
    codes: dict
    source: str  # input, relative to the source folder
    method: str
    status: str
    detail: str = ""
    landmarks: str = ""  # annotation, mesh, detector, annotation-fallback, aligned-crop
    score: float | None = None  # the detector's confidence (annotations: 1)
    faces: int = 0  # faces found in the photo

    def row(self) -> list:
        score = "" if self.score is None or not math.isfinite(self.score) else f"{self.score:.4f}"
        return [
            self.path,
            self.codes["id"],
            *(self.codes.get(k, "") for k in CODE_KEYS),
            self.source,
            self.landmarks,
            score,
            self.faces,
            self.method,
            self.status,
            self.detail,
        ]

    @classmethod
    def from_row(cls, row: dict) -> CropRecord:
        score = row.get("score") or ""
        return cls(
            path=row["path"],
            codes={"id": row["id"], **{k: row[k] for k in CODE_KEYS if row.get(k)}},
            source=row["source"],
            method=row["method"],
            status=row["status"],
            detail=row.get("detail", ""),
            landmarks=row.get("landmarks", ""),
            score=float(score) if score else None,
            faces=int(row.get("faces") or 0),
        )


@dataclass
class CropResult:
    source: Path
    kind: str  # "kface" or "photos"
    out: Path
    manifest: Path
    mode: str
    landmarks: str
    size: int
    identities: int
    images: int
    cropped: int
    methods: dict[str, int]
    problems: dict[str, int]  # status -> count (no face, missing/malformed annotation, unreadable image)
    landmark_sources: dict[str, int]  # landmarks column -> crops
    several_faces: int  # photos in which several faces were found (the largest was used)
    resumed: int  # photos skipped: already cropped by an earlier run with the same settings
    examples: dict[str, list[str]] = field(default_factory=dict)  # status -> a few "file: reason"
    by_camera: dict[str, dict[str, int]] = field(default_factory=dict)  # K-Face camera -> outcome -> photos
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------
# finding the photos
# ------------------------------------------------------------------------------------------


def _kface_items(raw: Path) -> list[_Item]:
    """Every K-Face image under raw/<Res>, sorted."""
    found = []
    for id_dir in sorted(p for p in raw.iterdir() if p.is_dir() and kc.is_identity_id(p.name)):
        for img in sorted(id_dir.rglob("*")):
            if img.suffix.lower() not in (".jpg", ".jpeg", ".png") or not img.is_file():
                continue
            codes = kc.parse_member_path(img.relative_to(id_dir).as_posix())
            if codes is not None:
                codes = {"id": id_dir.name, **codes}
                out = f"{id_dir.name}/{kc.face_filename(codes)}"
                found.append(_Item(id_dir.name, codes, img, img.relative_to(raw).as_posix(), out))
    return found


def _photo_items(root: Path) -> list[_Item]:
    """Every person's photo under ``root`` (``root/<name>/**`` and ``root/<name>.jpg``), sorted;
    hidden files and folders left out: the layouts ``kface enroll`` reads."""
    from kface_cli.face.imageio import identity_photos

    items = []
    for name, path in identity_photos(root):
        rel = path.relative_to(root / name) if path.parent != root else Path(path.name)
        suffix = path.suffix.lower()
        stem = "__".join((*rel.parts[:-1], path.stem)) + ("" if suffix == ".jpg" else "_" + suffix[1:])
        items.append(_Item(name, {"id": name}, path, path.relative_to(root).as_posix(), f"{name}/{stem}.jpg"))
    return items


# ------------------------------------------------------------------------------------------
# one photo
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Croppers:
    """The two landmark sources (mediapipe loads on the detector's first use)."""

    annotation: Detector
    detector: Detector


def _crop_one(item: _Item, out: Path, config: CropConfig, croppers: _Croppers) -> CropRecord:
    from kface_cli.dataset.annotation import read_annotation
    from kface_cli.face.align import box_crop
    from kface_cli.face.detector import ANNOTATION, ANNOTATION_FALLBACK, sidecar_path
    from kface_cli.face.imageio import read_image, write_image
    from kface_cli.face.pipeline import faces_in_image

    def record(status: Status, detail: str, **kw) -> CropRecord:
        return CropRecord("", item.codes, item.source, "", status.value, detail, **kw)

    txt = sidecar_path(item.path)
    use_annotation = config.landmarks == ANNOTATION or (config.landmarks == "auto" and txt is not None)
    if use_annotation and txt is None:
        return record(Status.missing_annotation, f"no {item.path.with_suffix('.txt').name}")
    try:
        image = read_image(item.path)
    except KFaceError as e:
        return record(Status.unreadable_image, e.message)
    try:
        if use_annotation:
            problems = read_annotation(txt).problems(image.shape[1], image.shape[0])  # type: ignore[arg-type]
            if problems:
                return record(Status.malformed_annotation, "; ".join(problems))
        landmarker = croppers.annotation if use_annotation else croppers.detector
        # the detector falls back to a sound annotation by itself (landmarks "annotation-fallback")
        found = faces_in_image(image, landmarker, path=item.path, size=config.size)
        landmarks = found[0].face.landmarks if found else ""
        if not found:
            return record(Status.no_face, "the detector found no face", landmarks="detect")
        face = found[0]
        if config.mode == CropMode.BOX:
            crop, method = box_crop(image, face.face.box, config.size, config.margin, config.square), "box"
        else:
            crop, method = face.crop, face.method
    except (KFaceError, ValueError) as e:  # ValueError: numerically degenerate points
        return record(Status.malformed_annotation, str(e))
    write_image(out / item.out, crop, quality=JPEG_QUALITY)
    n = len(found) if landmarks != ANNOTATION_FALLBACK else 0  # the detector counted no face
    detail = f"{n} faces: used the largest" if n > 1 else ""
    return CropRecord(item.out, item.codes, item.source, method, Status.ok.value, detail, landmarks, face.face.score, n)


# ------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------


def _settings(source: Path, kind: str, config: CropConfig) -> dict:
    d = asdict(config)
    d.update(mode=config.mode.value, source=str(source.resolve()), kind=kind)
    return d


def read_settings(faces: str | Path) -> dict | None:
    """The settings a crop folder was made with (:data:`SETTINGS_FILE`), or None."""
    path = Path(faces) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _previous(out: Path, settings: dict) -> dict[str, CropRecord]:
    """Finished crops of an earlier run with the same settings, by source (for resuming)."""
    manifest = out / MANIFEST
    if read_settings(out) != settings or not manifest.is_file():
        return {}
    done = {}
    for row in read_manifest(manifest):
        if row.get("status") == Status.ok.value and row.get("path") and (out / row["path"]).is_file():
            done[row["source"]] = CropRecord.from_row(row)
    return done


def _write_manifest(manifest: Path, records: list[CropRecord]) -> None:
    from kface_cli.atomic import atomic_open

    with atomic_open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        for r in sorted(records, key=lambda r: r.source):
            w.writerow(r.row())


def _check_config(config: CropConfig) -> None:
    if not 16 <= config.size <= MAX_SIZE:
        raise InputError(
            f"--size must be in [16, {MAX_SIZE}], got {config.size}",
            hint=f"Use {FACE_SIZE} (what ArcFace models expect).",
        )
    if not (math.isfinite(config.margin) and 0 <= config.margin <= MAX_MARGIN):
        raise InputError(
            f"--box-margin must be a finite number in [0, {MAX_MARGIN:g}], got {config.margin}",
            hint="Use 0 (the face box as annotated) or a positive fraction such as 0.1.",
        )


def crop(
    workdir: str | Path | None = None,
    *,
    res: str = DEFAULT_RESOLUTION,
    config: CropConfig = CropConfig(),
    raw_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    workers: int = 0,
) -> CropResult:
    """Crop every photo of ``raw_dir`` (default: the workspace's extracted ``res`` images).

    ``raw_dir`` is a K-Face extraction or any folder with one sub-folder of photos per identity
    (see the module docstring); ``out_dir`` defaults to ``faces/<Res>`` for K-Face and to
    ``faces/<folder name>`` for other photos. Writes the faces, ``manifest.csv`` and
    :data:`SETTINGS_FILE`; returns the counts.
    """
    from kface_cli.atomic import write_text
    from kface_cli.console import progress
    from kface_cli.face.detector import ANNOTATION, get_detector

    t0 = time.perf_counter()
    res = normalise_resolution(res)
    ws = Workspace.resolve(workdir)
    source = (
        Path(raw_dir).expanduser()
        if raw_dir is not None
        else ws.require(ws.raw(res), f"extracted {res} images", "kface extract SOURCE")
    )
    if not source.is_dir():
        raise InputError(
            f"not a folder: {source}",
            hint="Pass a K-Face extraction (raw/<Res>) or a folder with one sub-folder of photos per person.",
        )
    _check_config(config)
    config = dataclasses.replace(
        config,
        mode=CropMode.parse(config.mode, "--mode"),
        landmarks=LandmarkMode.parse(config.landmarks, "--landmarks"),
    )
    items = _kface_items(source)
    kind = "kface"
    if not items:
        if raw_dir is None:
            raise InputError(
                f"no K-Face images under {source}",
                hint="Expected <ID>/<S>/<L>/<E>/<C>.jpg; run `kface extract` first.",
            )
        items, kind = _photo_items(source), "photos"
    if kind == "photos" and not items:
        raise InputError(
            f"no photos under {source}",
            hint="Expected one sub-folder per person: SRC/<name>/*.jpg (PNG, BMP, WebP too; sub-folders allowed).",
        )
    out = (
        Path(out_dir)
        if out_dir is not None
        else (ws.faces(res) if kind == "kface" else ws.photo_faces(source.resolve().name))
    )
    settings = _settings(source, kind, config)
    earlier = read_settings(out)
    if source.resolve() == out.resolve() or source.resolve() in out.resolve().parents:
        raise InputError(f"the crops would be written into their source folder {source}", hint="Pass --out DIR.")
    if out_dir is None and earlier is not None and earlier.get("source") != settings["source"]:
        raise InputError(
            f"{out} holds crops of another folder ({earlier.get('source')})",
            hint="Pass --out DIR for these crops, or remove that folder first.",
        )
    done = _previous(out, settings)
    todo = [it for it in items if it.source not in done]
    records = [done[it.source] for it in items if it.source in done]
    from kface_cli.atomic import ensure_dir

    ensure_dir(out)
    write_text(out / SETTINGS_FILE, json.dumps(settings, indent=1, ensure_ascii=False) + "\n")
    manifest = out / MANIFEST
    croppers = _Croppers(get_detector(ANNOTATION), get_detector("detect"))
    n_workers = auto_workers(workers)
    saved = time.monotonic()
    with progress(
        f"Cropping {source.name} ({config.mode.value}, landmarks {config.landmarks})", total=len(todo)
    ) as bar:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for rec in pool.map(lambda it: _crop_one(it, out, config, croppers), todo):
                records.append(rec)
                bar.advance()
                if time.monotonic() - saved > SAVE_EVERY_S:
                    _write_manifest(manifest, records)
                    saved = time.monotonic()
    _write_manifest(manifest, records)
    return _summarise(records, source, kind, out, manifest, config, len(done), time.perf_counter() - t0)


def _summarise(
    records: list[CropRecord],
    source: Path,
    kind: str,
    out: Path,
    manifest: Path,
    config: CropConfig,
    resumed: int,
    seconds: float,
) -> CropResult:
    methods: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    by_camera: dict[str, Counter[str]] = {}
    for r in records:
        outcome = r.status
        if r.status == Status.ok.value:
            methods[r.method] += 1
            sources[r.landmarks] += 1
            outcome = r.landmarks
            if r.faces > 1:  # a group photo in a person's folder: enroll warns the same way
                ex = examples.setdefault(SEVERAL_FACES, [])
                if len(ex) < 3:
                    ex.append(f"{r.source}: {r.detail}")
        else:
            problems[r.status] += 1
            ex = examples.setdefault(r.status, [])
            if len(ex) < 3:
                ex.append(f"{r.source}: {r.detail}")
        if "cam" in r.codes:
            by_camera.setdefault(r.codes["cam"], Counter())[outcome] += 1
    return CropResult(
        source=source,
        kind=kind,
        out=out,
        manifest=manifest,
        mode=config.mode.value,
        landmarks=config.landmarks,
        size=config.size,
        identities=len({r.codes["id"] for r in records}),
        images=len(records),
        cropped=sum(methods.values()),
        methods=dict(methods),
        problems=dict(problems),
        landmark_sources=dict(sources),
        several_faces=sum(1 for r in records if r.faces > 1),
        resumed=resumed,
        examples=examples,
        by_camera={cam: dict(c) for cam, c in sorted(by_camera.items(), key=lambda kv: int(kv[0][1:]))},
        seconds=seconds,
    )


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a ``manifest.csv`` as dicts (columns :data:`MANIFEST_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}", hint="Run `kface crop` first.")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
