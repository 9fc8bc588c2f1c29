"""K-Face annotation files (``C7.txt`` beside ``C7.jpg``): 7 landmark points, then 5 to 7 boxes.

Format (one item per line; numbers separated by tabs, spaces, commas or semicolons)::

    176	116          point 0: nose tip
    186	97           point 1: eye on the image's left (the subject's right eye)
    190	96           point 2: eye on the image's right
    189	137          point 3: mouth corner, image left
    191	139          point 4: mouth corner, image right
    246	110          point 5: ear, image left
    250	110          point 6: ear, image right
    156	51	111	111  box: face (line 8: what the original tutorial crops)
    ...              boxes x y w h: eye left, eye right, nose, mouth, ear left, ear right

Parts that are not visible are left out: frontal cameras have 7 boxes, extreme profiles 5 (one
eye and one ear hidden), the others 6 (one ear hidden). The file does not say which eye or ear is
missing; :func:`parse_annotation` decides it from geometry: a lone eye or ear box whose centre lies
right of the nose tip is the image-right one.

``Annotation.points5`` gives the ArcFace alignment points in the template's order (K-Face points
1, 2, 0, 3, 4). Malformed text raises :class:`~kface_cli.errors.InputError` with the line number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.errors import InputError

BOX_NAMES: tuple[str, ...] = ("face", "eye_left", "eye_right", "nose", "mouth", "ear_left", "ear_right")
#: K-Face point indices of the five ArcFace points, in template order.
ARCFACE_POINT_ORDER: tuple[int, ...] = (1, 2, 0, 3, 4)
N_POINTS = 7
#: Largest coordinate accepted in a file (pixels); real ones are below a few thousand.
MAX_COORDINATE = 100_000
MIN_BOXES, MAX_BOXES = 5, 7

Box = tuple[float, float, float, float]  # x, y, w, h
_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class Annotation:
    """One parsed annotation file."""

    #: (7, 2) float64, K-Face order (nose, eye L, eye R, mouth L, mouth R, ear L, ear R).
    points: np.ndarray
    #: Visible parts only: keys among :data:`BOX_NAMES`, values (x, y, w, h).
    boxes: dict[str, Box] = field(default_factory=dict)

    @property
    def face_box(self) -> Box:
        return self.boxes["face"]

    @property
    def points5(self) -> np.ndarray:
        """(5, 2) float32 in ArcFace order: eye L, eye R, nose, mouth L, mouth R."""
        return self.points[list(ARCFACE_POINT_ORDER)].astype(np.float32)

    def problems(self, width: int, height: int, tolerance: float = 0.02) -> list[str]:
        """What makes this annotation unusable for an image of ``width`` x ``height`` (empty if fine).

        The face box must have a positive size and lie inside the image (``tolerance`` as a
        fraction of the image size is allowed for annotators' rounding).
        """
        issues: list[str] = []
        x, y, w, h = self.face_box
        tw, th = tolerance * width, tolerance * height
        if w <= 0 or h <= 0:
            issues.append(f"face box has zero size ({w:g}x{h:g})")
        elif x < -tw or y < -th or x + w > width + tw or y + h > height + th:
            issues.append(f"face box ({x:g},{y:g},{w:g},{h:g}) lies outside the {width}x{height} image")
        p5 = self.points5
        if (
            (p5[:, 0] < -tw).any()
            or (p5[:, 0] > width + tw).any()
            or (p5[:, 1] < -th).any()
            or (p5[:, 1] > height + th).any()
        ):
            issues.append("landmark points lie outside the image")
        return issues


def _numbers(line: str, lineno: int, source: str) -> list[float]:
    tokens = [t for t in _SEPARATORS.split(line.strip()) if t]
    try:
        nums = [float(t) for t in tokens]
    except ValueError:
        raise InputError(
            f"{source}: line {lineno} is not numbers: {line.strip()[:80]!r}",
            hint="K-Face annotations hold integers separated by tabs, spaces, commas or semicolons.",
        ) from None
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in nums):
        raise InputError(
            f"{source}: line {lineno} is not pixel coordinates: {line.strip()[:80]!r}",
            hint=f"Coordinates are finite and at most {MAX_COORDINATE:,} in size.",
        )
    return nums


def parse_annotation(text: str, source: str = "annotation") -> Annotation:
    """Parse the text of a K-Face ``.txt`` annotation. ``source`` names the file in errors."""
    lines = [(i, ln) for i, ln in enumerate(text.lstrip("\ufeff").splitlines(), start=1) if ln.strip()]
    if len(lines) < N_POINTS + MIN_BOXES:
        raise InputError(
            f"{source}: {len(lines)} non-empty lines, expected 7 points and 5-7 boxes (12-14 lines)",
            hint="The file is truncated or not a K-Face annotation.",
        )
    if len(lines) > N_POINTS + MAX_BOXES:
        raise InputError(f"{source}: {len(lines)} non-empty lines, expected at most 14 (7 points, 7 boxes)")
    points = []
    for lineno, line in lines[:N_POINTS]:
        nums = _numbers(line, lineno, source)
        if len(nums) != 2:
            raise InputError(f"{source}: line {lineno} should be a point 'x y', got {len(nums)} number(s)")
        points.append(nums)
    raw_boxes: list[Box] = []
    for lineno, line in lines[N_POINTS:]:
        nums = _numbers(line, lineno, source)
        if len(nums) != 4:
            raise InputError(f"{source}: line {lineno} should be a box 'x y w h', got {len(nums)} number(s)")
        if nums[2] < 0 or nums[3] < 0:
            raise InputError(f"{source}: line {lineno} box has a negative size")
        raw_boxes.append((nums[0], nums[1], nums[2], nums[3]))
    pts = np.asarray(points, dtype=np.float64)
    if np.ptp(pts, axis=0).max() < 1.0:
        raise InputError(f"{source}: the 7 landmarks are all at one place", hint="The file is not a real annotation.")
    return Annotation(points=pts, boxes=_name_boxes(raw_boxes, nose_x=float(pts[0, 0])))


def _centre_x(box: Box) -> float:
    return box[0] + box[2] / 2


def _side(box: Box, nose_x: float) -> str:
    return "right" if _centre_x(box) > nose_x else "left"


def _name_boxes(boxes: list[Box], nose_x: float) -> dict[str, Box]:
    if len(boxes) == 7:
        return dict(zip(BOX_NAMES, boxes))
    if len(boxes) == 6:  # face, eye L, eye R, nose, mouth, one ear
        named = dict(zip(BOX_NAMES[:5], boxes[:5]))
        named[f"ear_{_side(boxes[5], nose_x)}"] = boxes[5]
        return named
    # 5: face, one eye, nose, mouth, one ear
    face, eye, nose, mouth, ear = boxes
    return {
        "face": face,
        f"eye_{_side(eye, nose_x)}": eye,
        "nose": nose,
        "mouth": mouth,
        f"ear_{_side(ear, nose_x)}": ear,
    }


def read_annotation(path: str | Path) -> Annotation:
    """Read and parse an annotation file; a missing or malformed file raises InputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"annotation not found: {path}", hint="K-Face annotates only S001 with lights L1, L3, L6, L7."
        ) from None
    except OSError as e:
        raise InputError(f"cannot read annotation {path}: {e.strerror}") from None
    return parse_annotation(data.decode("utf-8", errors="replace"), source=str(path))


def format_annotation(points: np.ndarray, boxes: dict[str, Box], sep: str = "\t") -> str:
    """Write an annotation in K-Face's format: 7 integer points, then the given boxes in K-Face order."""
    pts = np.asarray(points, dtype=np.float64).reshape(N_POINTS, 2)
    unknown = set(boxes) - set(BOX_NAMES)
    assert not unknown, f"unknown box names {sorted(unknown)}; valid: {BOX_NAMES}"
    assert "face" in boxes and MIN_BOXES <= len(boxes) <= MAX_BOXES, (
        f"need a face box and 5-7 boxes, got {sorted(boxes)}"
    )
    lines = [sep.join(str(int(round(v))) for v in p) for p in pts]
    for name in BOX_NAMES:
        if name in boxes:
            lines.append(sep.join(str(int(round(v))) for v in boxes[name]))
    return "\n".join(lines) + "\n"
