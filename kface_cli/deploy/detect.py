"""Face detection on its own (``kface detect``): boxes, five ArcFace points and scores of every face.

What face_recognition's ``face_locations`` and deepface's ``extract_faces`` give, on the same path
every other stage uses (:func:`kface_cli.face.pipeline.faces_in_image`), so the points reported
here are the ones enroll and identify align with. ``annotate`` writes copies of the photos with
the boxes, points and scores drawn (:func:`kface_cli.deploy.draw.draw_faces`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kface_cli.deploy.sources import photo_paths
from kface_cli.errors import InputError, KFaceError
from kface_cli.face.detector import DetectedFace

#: The five ArcFace points, in order (image-left = the subject's right).
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class PhotoFaces:
    """The faces found in one photo (largest first), or why the photo was skipped."""

    image: Path
    width: int = 0
    height: int = 0
    faces: list[DetectedFace] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "face_count": len(self.faces),
            "faces": [f.to_dict() for f in self.faces],
            "error": self.error,
        }


@dataclass
class DetectResult:
    images: list[PhotoFaces]
    seconds: float = 0.0
    annotated: list[Path] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return sum(len(i.faces) for i in self.images)

    def to_json(self) -> dict[str, Any]:
        """What ``kface detect --json`` prints (docs/json.md): plain JSON types only."""
        from kface_cli.console import jsonable as plain

        return plain(
            {
                "face_count": self.faces,
                "seconds": round(self.seconds, 3),
                "images": [i.to_json() for i in self.images],
                "annotated": self.annotated,
            }
        )

    def data(self) -> tuple[list[str], list[list[Any]]]:
        """``--format csv|tsv``: one row per face; each point in its own two columns (docs/json.md)."""
        points = [f"{p}_{axis}" for p in POINT_NAMES for axis in ("x", "y")]
        columns = ["image", "face", "x", "y", "w", "h", "score", *points, "landmarks", "low_light"]
        rows = []
        for img in self.images:
            for k, f in enumerate(img.faces, 1):
                score = round(float(f.score), 4) if f.score == f.score else None
                xy = [round(float(v), 1) for v in f.points5.reshape(-1)]
                rows.append(
                    [str(img.image), k, *(round(float(v), 1) for v in f.box), score, *xy, f.landmarks, f.low_light]
                )
        return columns, rows


def detect_photos(
    paths: Sequence[str | Path],
    *,
    landmarks: str = "auto",
    min_face: int | None = None,
    annotate: str | Path | None = None,
    detector=None,
    aligned: bool | None = None,
) -> DetectResult:
    """Find every face in ``paths`` (photos or folders of photos).

    Args:
        landmarks: ``auto`` | ``detect`` | ``annotation`` (see :func:`kface_cli.face.detector.get_detector`).
        min_face: smallest face to look for, in pixels (None: the detector's default).
        annotate: folder to write copies of the photos with boxes, points and scores drawn.
        detector: an object with ``detect(image, path=None)`` instead of ``get_detector(landmarks)``.
        aligned: True: every photo is an aligned crop (its face is the whole square); None: the
            check of :func:`kface_cli.face.pipeline.faces_in_image`.

    An unreadable photo is reported in its entry (``error``) and skipped.
    """
    from kface_cli.console import progress, warn
    from kface_cli.deploy.sources import annotate_name
    from kface_cli.face.imageio import read_image, write_image
    from kface_cli.face.pipeline import faces_in_image

    files = photo_paths(paths)
    out_dir = Path(annotate) if annotate is not None else None
    if out_dir is not None:
        from kface_cli.atomic import check_output_folder

        check_output_folder(out_dir, inputs=files, option="--annotate")
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"--annotate needs a folder, got a file: {out_dir}")
        from kface_cli.atomic import ensure_dir

        ensure_dir(out_dir)
    if detector is None:
        from kface_cli.face.detector import get_detector

        detector = get_detector(landmarks, min_face=min_face) if min_face else get_detector(landmarks)  # type: ignore[arg-type]
    started = time.perf_counter()
    result = DetectResult([])
    used: set[str] = set()
    with progress("Detecting", total=len(files)) as bar:
        for path in files:
            entry = PhotoFaces(path)
            try:
                image = read_image(path)
                entry.height, entry.width = image.shape[:2]
                entry.faces = [found.face for found in faces_in_image(image, detector, aligned=aligned, path=path)]
            except KFaceError as e:
                entry.error = e.message
                warn(f"{path}: {e.message}: skipped")
            result.images.append(entry)
            if out_dir is not None and entry.error is None:
                from kface_cli.deploy.draw import draw_faces

                target = out_dir / annotate_name(path, used)
                write_image(target, draw_faces(image, entry.faces))
                result.annotated.append(target)
            bar.advance()
    result.seconds = time.perf_counter() - started
    return result


def table_rows(result: DetectResult) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of ``kface detect``'s table (one row per face; photos without faces too)."""
    from rich.text import Text

    from kface_cli.console import printable

    columns = ["image", "face", "box x,y,w,h", "score", "5 points (eyes, nose, mouth corners)", "points from"]
    rows: list[list[Any]] = []
    for img in result.images:
        if img.error or not img.faces:
            note = Text(printable(img.error), "red") if img.error else Text("no face", "dim")
            rows.append([img.image, None, note, None, "", ""])
        for k, f in enumerate(img.faces, 1):
            box = ",".join(f"{v:.0f}" for v in f.box)  # one word: never folded inside
            points = "  ".join(f"{x:.0f},{y:.0f}" for x, y in f.points5)
            source = f"{f.landmarks} (low light)" if f.low_light else f.landmarks
            rows.append([img.image, k, box, float(f.score), points, source])
    return columns, rows
