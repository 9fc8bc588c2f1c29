"""Reading and writing images as BGR uint8 arrays, whatever the user's files look like.

Handles JPEG/PNG/BMP/WebP/TIFF, greyscale, RGBA (composited on white), 16-bit (scaled to 8-bit)
and EXIF-rotated phone photos. Unicode paths work (bytes are decoded in memory). An unreadable
file raises :class:`UnreadableImageError` (an :class:`~kface_cli.errors.InputError`), so batch
callers skip it with a warning and go on.

Every file is untrusted: its size is bounded (:data:`MAX_IMAGE_BYTES`) before it is read, and the
pixel size its header claims (JPEG SOF, PNG IHDR, BMP, WebP, TIFF) is checked against
:data:`MAX_IMAGE_PIXELS` *before* decoding, so a tiny "decompression bomb" costs no memory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from kface_cli.atomic import special_file_kind
from kface_cli.errors import InputError

#: Largest image accepted, in pixels (width x height) as the header claims; K-Face's largest
#: real images are 864x576 and a 48 MP phone photo fits. 50 MP decodes to at most 400 MB (16-bit RGBA).
MAX_IMAGE_PIXELS = 50_000_000
#: Largest image file read, in bytes.
MAX_IMAGE_BYTES = 256 * 1024 * 1024


class UnreadableImageError(InputError):
    """An image that cannot or must not be decoded (corrupt, unsupported, or too large)."""


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


#: What ``kface identify`` calls a face it cannot name: never a person's name.
UNKNOWN_NAME = "unknown"


def check_identity_name(name: str, where: str | Path | None = None) -> str:
    """``name`` as a person's name, or an :class:`InputError` that says why not.

    Refused: an empty (or blank) name, and "unknown" in any case, which ``kface identify`` prints
    for a face it cannot name (a person of that name could never be told apart from no match).
    ``where``: the folder or file the name came from, for the message.
    """
    text = str(name) if name is not None else ""
    origin = f" ({where})" if where is not None else ""
    if not text.strip():
        raise InputError(
            f"an empty name cannot be a person's name{origin}",
            hint="Name each person: a folder DIR/<name>/ or a file DIR/<name>.jpg.",
        )
    if text.strip().casefold() == UNKNOWN_NAME:
        raise InputError(
            f"{text!r} cannot be a person's name{origin}: kface identify reports a face it cannot name as "
            f"{UNKNOWN_NAME!r}, so this person could never be told apart from no match",
            hint="Rename the folder or file (e.g. to the person's name).",
        )
    return text


def identity_photos(root: str | Path, *, flat: bool = True) -> list[tuple[str, Path]]:
    """``(name, photo)`` of every person's photos under ``root``, sorted: the layouts that ``kface
    crop`` and ``kface enroll`` both accept.

    * ``root/<name>/**/*.jpg``: a sub-folder per person (photos in deeper folders count too);
    * ``root/<name>.jpg`` (with ``flat``): one photo per person, named by the file's stem
      (``people/Eileen Collins.png`` is "Eileen Collins").

    Files and folders whose name starts with a dot (``.DS_Store``, ``._IMG.jpg``, ``.thumbnails/``)
    are left out. A name that cannot be a person's (:func:`check_identity_name`) is an error.
    """
    root = Path(root)
    found = []
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if entry.is_dir():
            photos = [
                f
                for f in sorted(entry.rglob("*"))
                if f.is_file()
                and is_image_file(f)
                and not any(part.startswith(".") for part in f.relative_to(entry).parts)
            ]
            if photos:
                check_identity_name(entry.name, entry)
            found.extend((entry.name, f) for f in photos)
        elif flat and entry.is_file() and is_image_file(entry):
            found.append((check_identity_name(entry.stem, entry), entry))
    return found


def decode_image(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 (H, W, 3) array, applying EXIF orientation."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise UnreadableImageError(f"empty image file: {source}", hint="Check the file; it holds no data.")
    if buf.size > MAX_IMAGE_BYTES:
        raise UnreadableImageError(
            f"image file too large: {source} ({buf.size} bytes)",
            hint=f"kface reads images up to {MAX_IMAGE_BYTES // 2**20} MiB.",
        )
    size = image_size(data)
    if size is None:
        raise UnreadableImageError(f"cannot read image {source}", hint=_NOT_VALID)
    _check_pixels(size, source)
    if data[:8] == _PNG_SIGNATURE and (problem := _png_damage(data)) is not None:
        # checked here, not left to libpng, which prints "libpng error: ..." straight to stderr
        raise UnreadableImageError(f"cannot read image {source}: {problem}", hint="The PNG file is damaged.")
    _quiet_opencv()
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        raw = None
    if raw is None or raw.size == 0:
        raise UnreadableImageError(f"cannot read image {source}", hint=_NOT_VALID)
    _check_pixels((raw.shape[1], raw.shape[0]), source)
    img = _to_bgr8(raw)
    orientation = _exif_orientation(data)
    if orientation in _EXIF_OPS:
        img = _EXIF_OPS[orientation](img)
    return np.ascontiguousarray(img)


def check_regular_file(path: str | Path) -> None:
    """Refuse, without opening it, a path that is not a regular file (a FIFO named ``photo.jpg``
    would block ``open()`` forever; a device never ends; a socket cannot be read)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", hint="Check the path.") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    kind = special_file_kind(mode)
    if kind is not None:
        raise UnreadableImageError(
            f"{path} is {kind}, not a photo", hint="kface reads photos and videos from regular files only."
        )


def read_file(path: str | Path, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a regular file (at most ``limit`` + 1 of them): never blocks on a FIFO.

    The file is opened with ``O_NONBLOCK`` (a FIFO swapped in after a check does not block the
    open) and checked with ``fstat`` on the open descriptor before anything is read.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", hint="Check the path.") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        kind = special_file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise UnreadableImageError(f"{path} is {kind}, not a photo")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        try:
            return fh.read(limit + 1)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3); anything but a regular file is refused unopened."""
    path = Path(path)
    return decode_image(read_file(path), path)


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
        img = np.nan_to_num(img, nan=0.0, posinf=255.0, neginf=0.0)
        img = np.clip(img * (255.0 if img.size and img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
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


_NOT_VALID = "It is not a valid image (JPEG, PNG, BMP, WebP or TIFF)."
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_pixels(size: tuple[int, int], source) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise UnreadableImageError(f"cannot read image {source}: its header claims {w}x{h} pixels", hint=_NOT_VALID)
    if w * h > MAX_IMAGE_PIXELS:
        raise UnreadableImageError(
            f"image too large: {source} claims {w}x{h} pixels",
            hint=f"kface decodes images up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels; resize it.",
        )


@functools.cache
def _quiet_opencv() -> None:
    """Silence OpenCV's own log lines (decoder warnings), once; OpenCV 5 has cv2.utils.logging, 4 has cv2.setLogLevel."""
    import cv2

    log = getattr(getattr(cv2, "utils", None), "logging", None)
    set_level = getattr(log, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    if set_level is not None:
        try:
            set_level(getattr(log, "LOG_LEVEL_ERROR", 2) if log is not None else 2)
        except Exception:  # noqa: BLE001 - logging is cosmetic
            pass


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes inflated at a time when a PNG's compressed data is checked (memory stays bounded).
_PNG_CHECK_CHUNK = 1 << 20


def _png_damage(data: bytes) -> str | None:
    """What is wrong with a PNG's chunks or compressed data (CRCs, truncation, zlib stream), or None.

    The inflated bytes are thrown away as they come: this costs one inflate, not the image's memory.
    """
    import zlib

    pos, n = len(_PNG_SIGNATURE), len(data)
    inflater = zlib.decompressobj()
    row_bytes = _png_row_bytes(data)  # None: interlaced or unknown (filter bytes not checked)
    inflated = 0

    def bad_filters(out: bytes) -> bool:  # each row starts with a filter type 0-4
        nonlocal inflated
        first = (-inflated) % row_bytes if row_bytes else 0
        inflated += len(out)
        return bool(row_bytes) and any(b > 4 for b in out[first::row_bytes])

    while True:
        if pos + 12 > n:
            return "the file is truncated"
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            return "the file is truncated"
        if zlib.crc32(data[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return f"CRC error in its {kind.decode('latin-1')!r} chunk"
        if kind == b"IDAT":
            try:
                out = inflater.decompress(data[pos + 8 : end - 4], _PNG_CHECK_CHUNK)
                while True:
                    if bad_filters(out):
                        return "its pixel rows are corrupt (bad filter type)"
                    if not inflater.unconsumed_tail:
                        break
                    out = inflater.decompress(inflater.unconsumed_tail, _PNG_CHECK_CHUNK)
            except zlib.error:
                return "its compressed data is corrupt"
        elif kind == b"IEND":
            return None if inflater.eof else "its compressed data is incomplete"
        pos = end


def _png_row_bytes(data: bytes) -> int | None:
    """Bytes per pixel row (with its filter byte) of a non-interlaced PNG, from IHDR; None otherwise."""
    width, depth, colour, interlace = int.from_bytes(data[16:20], "big"), data[24], data[25], data[28]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if interlace or channels is None or width == 0:
        return None
    return 1 + (width * channels * depth + 7) // 8


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, BMP, WebP or TIFF, without decoding; None if unknown."""
    try:
        if data[:8] == _PNG_SIGNATURE:
            if data[12:16] != b"IHDR":
                return None
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM" and len(data) >= 26:
            hsize = int.from_bytes(data[14:18], "little")
            if hsize == 12:
                return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
            return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(
                int.from_bytes(data[22:26], "little", signed=True)
            )
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
    except (IndexError, ValueError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            return None
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + seg_len
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    u = lambda a, b: int.from_bytes(data[a:b], order)  # noqa: E731
    ifd = u(8, 16) if big else u(4, 8)
    count = u(ifd, ifd + 8) if big else u(ifd, ifd + 2)
    start, step = (ifd + 8, 20) if big else (ifd + 2, 12)
    dims: dict[int, int] = {}
    for k in range(min(count, 4096)):
        e = start + step * k
        if e + step > len(data):
            return None
        tag, typ = u(e, e + 2), u(e + 2, e + 4)
        if tag in (256, 257):
            voff = e + (12 if big else 8)
            dims[tag] = u(voff, voff + 2) if typ == 3 else u(voff, voff + (8 if typ == 16 else 4))
            if len(dims) == 2:
                return dims[256], dims[257]
    return None


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
