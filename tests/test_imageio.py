"""Image reading: the odd formats users have (grey, RGBA, 16-bit, EXIF-rotated JPEG), and errors."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from kface_cli.errors import InputError
from kface_cli.face.imageio import decode_image, is_image_file, read_image, write_image


def _pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """A BGR image whose corners differ, so rotations and flips are detectable."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)  # top-left blue
    img[: h // 2, w // 2 :] = (0, 255, 0)  # top-right green
    img[h // 2 :, : w // 2] = (0, 0, 255)  # bottom-left red
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


def _with_exif_orientation(jpeg: bytes, orientation: int, byte_order: str = "MM") -> bytes:
    """Insert an APP1/Exif segment holding one IFD0 entry (Orientation) right after SOI."""
    fmt = ">" if byte_order == "MM" else "<"
    tiff = byte_order.encode() + struct.pack(fmt + "HI", 42, 8)
    tiff += (
        struct.pack(fmt + "H", 1) + struct.pack(fmt + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(fmt + "I", 0)
    )
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def _close(a: np.ndarray, b: np.ndarray, tol: float = 12.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(float) - b.astype(float)).mean()) < tol


@pytest.mark.parametrize(
    ("orientation", "op"),
    [
        (1, lambda im: im),
        (3, lambda im: np.rot90(im, 2)),
        (6, lambda im: np.rot90(im, -1)),  # camera held rotated: display turned 90 degrees clockwise
        (8, lambda im: np.rot90(im, 1)),
        (2, lambda im: im[:, ::-1]),
    ],
)
@pytest.mark.parametrize("byte_order", ["MM", "II"])
def test_exif_rotated_jpeg_is_turned_upright(orientation, op, byte_order):
    img = _pattern()
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = _with_exif_orientation(enc.tobytes(), orientation, byte_order)
    out = decode_image(data)
    assert _close(out, np.ascontiguousarray(op(img)))
    if orientation in (6, 8):
        assert out.shape[:2] == (img.shape[1], img.shape[0])


def test_greyscale_becomes_three_equal_channels(tmp_path: Path):
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1))
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), grey)
    out = read_image(path)
    assert out.shape == (20, 50, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_rgba_is_composited_on_white(tmp_path: Path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :, :3] = (10, 20, 30)  # BGR
    rgba[:, :5, 3] = 255  # left half opaque
    rgba[:, 5:, 3] = 0  # right half transparent
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), rgba)
    out = read_image(path)
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:, :5], np.broadcast_to([10, 20, 30], (10, 5, 3)))
    np.testing.assert_array_equal(out[:, 5:], 255)


def test_sixteen_bit_png_is_scaled_to_eight_bit(tmp_path: Path):
    img16 = np.zeros((8, 8, 3), np.uint16)
    img16[..., 0] = 65535
    img16[..., 1] = 257 * 100
    img16[..., 2] = 0
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), img16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = read_image(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 100, 0])


def test_grey_sixteen_bit(tmp_path: Path):
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), np.full((5, 7), 257 * 40, np.uint16))
    out = read_image(path)
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, 40)


def test_unicode_path_and_atomic_write_round_trip(tmp_path: Path):
    path = tmp_path / "얼굴 photo.png"
    img = _pattern()
    write_image(path, img)
    np.testing.assert_array_equal(read_image(path), img)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_unreadable_inputs_raise_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_is_image_file():
    assert is_image_file("a/B.JPG") and is_image_file("x.png") and is_image_file("y.webp")
    assert not is_image_file("C7.txt") and not is_image_file("model.onnx")


def _png_bomb(w: int, h: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64, 9)  # valid small zlib stream, far too short for the claimed size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_claiming(w: int, h: int) -> bytes:
    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(enc.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def test_huge_jpeg_header_is_refused_with_input_error(tmp_path: Path):
    from kface_cli.face.imageio import UnreadableImageError

    p = tmp_path / "huge.jpg"
    p.write_bytes(_jpeg_claiming(65000, 65000))
    with pytest.raises(UnreadableImageError, match="65000x65000"):
        read_image(p)


def test_png_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch):
    from kface_cli.face import imageio

    p = tmp_path / "bomb.png"
    p.write_bytes(_png_bomb(20000, 20000))
    assert imageio.image_size(p.read_bytes()) == (20000, 20000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded a bomb"))
    with pytest.raises(imageio.UnreadableImageError, match="20000x20000"):
        read_image(p)


def test_header_sizes_of_real_files_match_decoded():
    from kface_cli.face.imageio import image_size

    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".jpg", ".png", ".bmp", ".webp", ".tif"):
        ok, enc = cv2.imencode(ext, img)
        assert image_size(enc.tobytes()) == (53, 37), ext
