"""Where deployment commands read faces from: photos and folders named on the command line,
video files and webcams (OpenCV), one :class:`Frame` at a time; and the names annotated copies get.

``kface identify`` reads all of them; ``kface detect``, ``verify`` and ``embed`` take photos only
(:func:`photo_paths`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kface_cli.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class Frame:
    label: str
    image: np.ndarray | None  # BGR; None when it could not be read
    path: Path | None  # for sidecar landmarks
    annotate_name: str
    error: str | None = None


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Photos and videos named on the command line; folders are searched recursively."""
    from kface_cli.face.imageio import check_regular_file, is_image_file

    if not paths:
        raise InputError("no photos given", hint="Pass photos, folders or videos, or --camera 0.")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"not found: {p}", hint="Check the path.")
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and (is_image_file(f) or is_video(f))]
            if not found:
                raise InputError(f"no photos or videos in {p}")
            out.extend(found)
        elif is_image_file(p) or is_video(p):
            check_regular_file(p)  # a FIFO named photo.jpg would block forever
            out.append(p)
        else:
            raise InputError(
                f"{p} is neither a photo nor a video",
                hint="Photos: JPEG, PNG, BMP, WebP, TIFF; videos: " + ", ".join(VIDEO_EXTENSIONS),
            )
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def annotate_name(path: Path, used: set[str]) -> str:
    name = path.name if path.suffix.lower() in (".jpg", ".jpeg", ".png") else path.stem + ".jpg"
    stem, suffix = Path(name).stem, Path(name).suffix
    k = 1
    while name in used:
        k += 1
        name = f"{stem}_{k}{suffix}"
    used.add(name)
    return name


def photo_frames(files: Sequence[Path], every: int, max_frames: int | None = None) -> Iterator[Frame]:
    """Video frames, and photos not yet read (:func:`kface_cli.deploy.identify._find_faces` reads them, on a worker thread)."""
    used: set[str] = set()
    for f in files:
        if is_video(f):
            yield from video_frames(f, every, label=str(f), max_frames=max_frames)
            continue
        yield Frame(str(f), None, f, annotate_name(f, used))


def open_capture(source: Path | int):
    """An opened ``cv2.VideoCapture`` on a video file or a camera index (clear error otherwise)."""
    import cv2

    # No V4L/FFmpeg noise for a missing camera. OpenCV 5 has cv2.utils.logging; OpenCV 4 has
    # cv2.getLogLevel/setLogLevel (0 = silent in both).
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    get_level = getattr(log, "getLogLevel", None) or getattr(cv2, "getLogLevel", None)
    set_level = getattr(log, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    level = get_level() if get_level and set_level else None
    if level is not None:
        set_level(0)
    try:
        cap = cv2.VideoCapture(str(source) if isinstance(source, Path) else source)
        opened = cap.isOpened()
    finally:
        if level is not None:
            set_level(level)
    if not opened:
        if isinstance(source, int):
            raise InputError(
                f"no camera {source} could be opened",
                hint="Check that a webcam is connected and not in use (try --camera 1), or pass photos or a video file instead.",
            )
        raise InputError(
            f"cannot read video {source}", hint="OpenCV could not open it; convert it to MP4 (H.264) or extract frames."
        )
    return cap


def video_frames(
    source: Path | int, every: int, label: str, max_frames: int | None = None, cap=None
) -> Iterator[Frame]:
    """Every ``every``-th frame of a video file or camera (``cap``: an already opened capture)."""
    cap = cap if cap is not None else open_capture(source)
    stem = source.stem if isinstance(source, Path) else f"camera{source}"
    n = 0
    yielded = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % every == 0:
                yield Frame(f"{label}#frame={n}", frame, None, f"{stem}_frame{n:06d}.jpg")
                yielded += 1
                if max_frames is not None and yielded >= max_frames:
                    break
            n += 1
    finally:
        cap.release()
    if n == 0 and isinstance(source, Path):
        raise InputError(f"video {source} has no readable frames")


def photo_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Photos named on the command line (folders searched recursively); videos are refused."""
    files = expand_inputs(paths)
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
    if videos:
        raise InputError(f"{videos[0]} is a video", hint="This command takes photos; `kface identify` reads videos.")
    return files
