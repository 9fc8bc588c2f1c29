"""Drawing identification results on photos: boxes plus names in any script.

OpenCV's ``putText`` only knows ASCII (a Korean name comes out as ``???``), and PIL is not a
dependency, so labels are rendered with FreeType through matplotlib's ``FT2Font`` (matplotlib is
already installed). Each character is drawn with the first font that has it: DejaVu Sans (shipped
with matplotlib), then any installed system font covering it (e.g. Noto Sans CJK or NanumGothic
for Hangul), then matplotlib's "Last Resort" font, whose placeholder glyph shows which script is
missing. Drawing never raises on a name; the exact names are in the JSON/CSV output.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

LABEL_HEIGHT_PX = 18
KNOWN_COLOUR = (60, 200, 60)  # BGR
UNKNOWN_COLOUR = (40, 40, 230)


@functools.lru_cache(maxsize=1)
def _font_files() -> tuple[str, ...]:
    """Candidate font files: DejaVu Sans first, then every font matplotlib knows, Last Resort last."""
    from matplotlib import font_manager

    primary = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    others = sorted({f.fname for f in font_manager.fontManager.ttflist if f.fname.lower().endswith((".ttf", ".otf"))})
    last = [f for f in others if "lastresort" in Path(f).name.lower()]
    middle = [f for f in others if f != primary and f not in last]
    return tuple([primary, *middle, *last])


@functools.lru_cache(maxsize=64)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=4096)
def font_for(char: str) -> str | None:
    """The first font file with a glyph for ``char`` (None if no font has one)."""
    code = ord(char)
    for path in _font_files():
        if code in _charmap(path):
            return path
    return None


def missing_glyphs(text: str) -> str:
    """The characters of ``text`` no installed font can draw properly (Last Resort does not count)."""
    out = []
    for ch in text:
        path = font_for(ch) if ch.isprintable() else None
        if ch.isprintable() and (path is None or "lastresort" in Path(path).name.lower()):
            out.append(ch)
    return "".join(dict.fromkeys(out))


def render_text(text: str, height: int = LABEL_HEIGHT_PX) -> np.ndarray:
    """Rasterise ``text`` to an alpha mask (h, w) uint8, one font run at a time."""
    from matplotlib.ft2font import FT2Font

    runs: list[tuple[str, str]] = []  # (font path, text)
    for ch in text if text else " ":
        if not ch.isprintable():
            continue  # control and zero-width characters draw nothing
        path = font_for(ch)
        if path is None:
            path, ch = _font_files()[0], "?"
        if runs and runs[-1][0] == path:
            runs[-1] = (path, runs[-1][1] + ch)
        else:
            runs.append((path, ch))
    size_pt = height * 0.72  # at 72 dpi one point is one pixel; leave room for descenders
    pieces = []
    for path, chunk in runs:
        font = FT2Font(path)
        font.set_size(size_pt, 72)
        font.set_text(chunk, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        img = np.asarray(font.get_image(), dtype=np.uint8)  # (h, w) glyph coverage
        # place the run on a common baseline: FreeType reports the descent in 1/64 pixels
        descent = font.get_descent() // 64
        canvas = np.zeros((height, img.shape[1]), dtype=np.uint8)
        top = max(0, height - img.shape[0] - max(0, 4 - descent))
        h = min(img.shape[0], height - top)
        canvas[top : top + h] = img[:h]
        pieces.append(canvas)
    return np.concatenate(pieces, axis=1) if pieces else np.zeros((height, 1), dtype=np.uint8)


def blend_label(image: np.ndarray, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """Draw a filled label box at (x, y) (top-left) with white text from ``mask``; clipped to the image."""
    pad = 3
    h, w = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    H, W = image.shape[:2]
    x0, y0 = max(0, min(x, W - 1)), max(0, min(y, H - 1))
    x1, y1 = min(W, x0 + w), min(H, y0 + h)
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1].astype(np.float32)
    region[:] = region * 0.25 + np.array(colour, np.float32) * 0.75
    m = np.zeros((h, w), np.float32)
    m[pad : pad + mask.shape[0], pad : pad + mask.shape[1]] = mask / 255.0
    m = m[: y1 - y0, : x1 - x0, None]
    region = region * (1 - m) + 255.0 * m
    image[y0:y1, x0:x1] = region.round().astype(np.uint8)


def draw_faces(image: np.ndarray, faces, *, label_height: int = LABEL_HEIGHT_PX) -> np.ndarray:
    """A copy of ``image`` (BGR) with each face's box and label drawn.

    ``faces``: objects with ``box`` (x, y, w, h) and either ``name`` and ``distance``
    (``FaceMatch``: labelled ``name distance``) or ``score`` and ``points5`` (``DetectedFace``:
    labelled with the score, the five points drawn as dots).
    """
    import cv2

    out = image.copy()
    scale = max(1.0, max(out.shape[:2]) / 640.0)
    lh = int(round(label_height * scale))
    for face in faces:
        x, y, w, h = (int(round(v)) for v in face.box)
        name = getattr(face, "name", None)
        colour = KNOWN_COLOUR if name != "unknown" else UNKNOWN_COLOUR
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, max(1, int(round(2 * scale))))
        for px, py in getattr(face, "points5", None) if name is None else ():
            cv2.circle(out, (int(round(px)), int(round(py))), max(2, int(round(2 * scale))), colour, -1)
        dist = getattr(face, "distance", None)
        if name is None:
            label = f"{face.score:.2f}"
        else:
            label = name if dist is None or not np.isfinite(dist) else f"{name} {dist:.2f}"
        mask = render_text(label, lh)
        blend_label(out, mask, x, y - mask.shape[0] - 6 if y - mask.shape[0] - 6 >= 0 else y + h, colour)
    return out
