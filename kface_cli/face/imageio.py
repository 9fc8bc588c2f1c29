"""Reading and writing images as BGR uint8 arrays, whatever the user's files look like.

Handles JPEG/PNG/BMP/WebP/TIFF, greyscale, RGBA (composited on white), 16-bit (scaled to 8-bit)
and EXIF-rotated phone photos. Unicode paths work (bytes are decoded in memory). An unreadable
file raises :class:`~kface_cli.errors.InputError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kface_cli.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 (H, W, 3) array, applying EXIF orientation."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise InputError(f"empty image file: {source}", hint="Check the file; it holds no data.")
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"cannot read image {source}", hint="It is not a valid image (JPEG, PNG, BMP, WebP or TIFF).")
    img = _to_bgr8(raw)
    orientation = _exif_orientation(data)
    if orientation in _EXIF_OPS:
        img = _EXIF_OPS[orientation](img)
    return np.ascontiguousarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", hint="Check the path.") from None
    except IsADirectoryError:
        raise InputError(f"expected an image file, got a folder: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    return decode_image(data, path)


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write a BGR image atomically (format from the extension)."""
    import cv2

    from kface_cli.atomic import write_bytes

    path = Path(path)
    ext = path.suffix.lower() or ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(ext, image, params)
    if not ok:
        raise InputError(f"cannot encode image as {ext}: {path}")
    write_bytes(path, enc.tobytes())


def _to_bgr8(raw: np.ndarray) -> np.ndarray:
    import cv2

    img = raw
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32)
        return (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return img[:, :, :3]


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of a JPEG, or 1 when absent. Pure-Python parser."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return 1
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 1
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan
            return 1
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            return _orientation_from_tiff(data[i + 10 : i + 2 + seg_len])
        i += 2 + seg_len
    return 1


def _orientation_from_tiff(tiff: bytes) -> int:
    if len(tiff) < 8:
        return 1
    order = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry : entry + 2], order) == 0x0112:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _rot90(img: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(img, k)


_EXIF_OPS = {
    2: lambda im: im[:, ::-1],
    3: lambda im: im[::-1, ::-1],
    4: lambda im: im[::-1, :],
    5: lambda im: np.transpose(im, (1, 0, 2)),
    6: lambda im: _rot90(im, -1),  # rotate 90 clockwise
    7: lambda im: _rot90(np.transpose(im, (1, 0, 2)), 2),
    8: lambda im: _rot90(im, 1),  # rotate 90 counter-clockwise
}
