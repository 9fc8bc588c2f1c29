"""``kface crop``: turn extracted K-Face images into 112x112 face crops, with a manifest.

Reads ``raw/<Res>/<ID>/<S>/<L>/<E>/<C>.jpg`` and its ``.txt`` annotation; writes
``faces/<Res>/<ID>/<ID>_<S>_<L>_<E>_<C>.jpg`` and ``faces/<Res>/manifest.csv``.

Modes
-----
``align`` (default)
    The ArcFace alignment, exactly as insightface does it: a least-squares similarity transform
    (Umeyama) from K-Face points 1, 2, 0, 3, 4 (eyes, nose tip, mouth corners) onto the 112x112
    template, through :func:`kface_cli.face.align.norm_crop` (the same function enroll, identify
    and evaluate use, so training and inference see identically prepared faces).

    Fallback rule: when the 5 points are degenerate (:func:`kface_cli.face.align.is_degenerate`:
    eyes closer than 4 px, or closer than 0.25 x the eye-to-mouth distance; this happens in the
    profiles C1, C2, C12, C13 where both eyes project to one spot) the face box is cropped
    instead, squared around its centre. The manifest records ``method=box-fallback`` and the
    summary counts these images.
``box``
    The original tutorial's crop: the face box (annotation line 8) cut out and resized, with an
    optional ``margin`` (fraction of the box added on every side) and ``square`` (grow the short
    side to the long one). Parts outside the image are black.

Images whose annotation is missing or malformed (too few numbers, a face box outside the image
or of zero size) and unreadable images are skipped, counted and listed in the manifest with
their reason; they never stop the run. K-Face only annotates S001 with lights L1, L3, L6, L7.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.choices import CropMode
from kface_cli.dataset import codes as kc
from kface_cli.defaults import FACE_SIZE, auto_workers
from kface_cli.errors import InputError, KFaceError
from kface_cli.workspace import DEFAULT_RESOLUTION, MANIFEST, Workspace, normalise_resolution

MANIFEST_COLUMNS = ["path", "id", "acc", "light", "expr", "cam", "source", "method", "status", "detail"]
JPEG_QUALITY = 95


class Status(str, enum.Enum):
    ok = "ok"
    missing_annotation = "missing-annotation"
    malformed_annotation = "malformed-annotation"
    unreadable_image = "unreadable-image"


MAX_MARGIN = 2.0  # fraction of the face box added on each side
MAX_SIZE = 1024  # output crop side, pixels


@dataclass(frozen=True)
class CropConfig:
    mode: CropMode = CropMode.ALIGN
    size: int = FACE_SIZE
    margin: float = 0.0
    square: bool = False


def box_crop(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int = FACE_SIZE,
    margin: float = 0.0,
    square: bool = False,
) -> np.ndarray:
    """Cut ``box`` (x, y, w, h) out of ``image`` (black outside), grown by ``margin``, resized to ``size``."""
    import cv2

    from kface_cli.face.align import resize_crop

    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise InputError(f"face box has zero size ({w:g}x{h:g})")
    cx, cy = x + w / 2, y + h / 2
    if square:
        w = h = max(w, h)
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    x1, y1 = x0 + max(int(round(w)), 1), y0 + max(int(round(h)), 1)
    H, W = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return resize_crop(image[y0:y1, x0:x1], size)


def crop_face(image: np.ndarray, annotation, config: CropConfig = CropConfig()) -> tuple[np.ndarray, str]:
    """Crop one face: returns (``size`` x ``size`` BGR image, method: ``align``, ``box`` or ``box-fallback``)."""
    from kface_cli.face.align import is_degenerate, norm_crop

    if config.mode == CropMode.BOX:
        return box_crop(image, annotation.face_box, config.size, config.margin, config.square), "box"
    p5 = annotation.points5
    if is_degenerate(p5):
        return box_crop(image, annotation.face_box, config.size, config.margin, square=True), "box-fallback"
    return norm_crop(image, p5, config.size), "align"


@dataclass
class CropRecord:
    path: str  # output, relative to faces/<Res> ("" when not written)
    codes: dict
    source: str  # input, relative to raw/<Res>
    method: str
    status: str
    detail: str = ""


@dataclass
class CropResult:
    raw: Path
    out: Path
    manifest: Path
    mode: str
    size: int
    identities: int
    images: int
    cropped: int
    methods: dict[str, int]
    problems: dict[str, int]  # status -> count (missing/malformed annotation, unreadable image)
    examples: dict[str, list[str]] = field(default_factory=dict)  # status -> a few "file: reason"
    seconds: float = 0.0


def _find_images(raw: Path) -> list[tuple[str, dict, Path]]:
    """(id, codes, path) of every K-Face image under raw/<Res>, sorted."""
    found = []
    for id_dir in sorted(p for p in raw.iterdir() if p.is_dir() and kc.is_identity_id(p.name)):
        for img in sorted(id_dir.rglob("*")):
            if img.suffix.lower() not in (".jpg", ".jpeg", ".png") or not img.is_file():
                continue
            codes = kc.parse_member_path(img.relative_to(id_dir).as_posix())
            if codes is not None:
                found.append((id_dir.name, {"id": id_dir.name, **codes}, img))
    return found


def _crop_one(item: tuple[str, dict, Path], raw: Path, out: Path, config: CropConfig) -> CropRecord:
    from kface_cli.dataset.annotation import read_annotation
    from kface_cli.face.imageio import read_image, write_image

    ident, codes, img_path = item
    rel_src = img_path.relative_to(raw).as_posix()
    name = kc.face_filename(codes)
    txt = img_path.with_suffix(".txt")
    if not txt.is_file():
        return CropRecord("", codes, rel_src, "", Status.missing_annotation.value, f"no {txt.name}")
    try:
        image = read_image(img_path)
    except KFaceError as e:
        return CropRecord("", codes, rel_src, "", Status.unreadable_image.value, str(e))
    try:
        ann = read_annotation(txt)
        problems = ann.problems(image.shape[1], image.shape[0])
        if problems:
            return CropRecord("", codes, rel_src, "", Status.malformed_annotation.value, "; ".join(problems))
        face, method = crop_face(image, ann, config)
    except (KFaceError, ValueError) as e:  # ValueError: numerically degenerate points
        return CropRecord("", codes, rel_src, "", Status.malformed_annotation.value, str(e))
    rel_out = f"{ident}/{name}"
    write_image(out / rel_out, face, quality=JPEG_QUALITY)
    return CropRecord(rel_out, codes, rel_src, method, Status.ok.value)


def crop(
    workdir: str | Path | None = None,
    *,
    res: str = DEFAULT_RESOLUTION,
    config: CropConfig = CropConfig(),
    raw_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    workers: int = 0,
) -> CropResult:
    """Crop every extracted image of ``res``; writes the faces and ``manifest.csv``; returns counts."""
    from kface_cli.atomic import atomic_open
    from kface_cli.console import progress

    t0 = time.perf_counter()
    res = normalise_resolution(res)
    ws = Workspace.resolve(workdir)
    raw = (
        Path(raw_dir)
        if raw_dir is not None
        else ws.require(ws.raw(res), f"extracted {res} images", "kface extract SOURCE")
    )
    if not raw.is_dir():
        raise InputError(f"not a folder: {raw}", hint="Pass the raw/<Res> folder written by `kface extract`.")
    out = Path(out_dir) if out_dir is not None else ws.faces(res)
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
    config = dataclasses.replace(config, mode=CropMode.parse(config.mode, "--mode"))
    items = _find_images(raw)
    if not items:
        raise InputError(
            f"no K-Face images under {raw}", hint="Expected <ID>/<S>/<L>/<E>/<C>.jpg; run `kface extract` first."
        )
    n_workers = auto_workers(workers)
    records: list[CropRecord] = []
    with progress(f"Cropping {res} ({config.mode})", total=len(items)) as bar:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for rec in pool.map(lambda it: _crop_one(it, raw, out, config), items):
                records.append(rec)
                bar.advance()
    manifest = out / MANIFEST
    with atomic_open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        for r in records:
            w.writerow(
                [
                    r.path,
                    r.codes["id"],
                    r.codes["acc"],
                    r.codes["light"],
                    r.codes["expr"],
                    r.codes["cam"],
                    r.source,
                    r.method,
                    r.status,
                    r.detail,
                ]
            )
    methods: dict[str, int] = {}
    problems: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for r in records:
        if r.status == Status.ok.value:
            methods[r.method] = methods.get(r.method, 0) + 1
        else:
            problems[r.status] = problems.get(r.status, 0) + 1
            ex = examples.setdefault(r.status, [])
            if len(ex) < 3:
                ex.append(f"{r.source}: {r.detail}")
    return CropResult(
        raw=raw,
        out=out,
        manifest=manifest,
        mode=config.mode.value,
        size=config.size,
        identities=len({r.codes["id"] for r in records}),
        images=len(records),
        cropped=sum(methods.values()),
        methods=methods,
        problems=problems,
        examples=examples,
        seconds=time.perf_counter() - t0,
    )


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a ``manifest.csv`` as dicts (columns :data:`MANIFEST_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}", hint="Run `kface crop` first.")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
