"""Face detection time per photo at 640x480 and 4000x3000 (12 MP phone photo).

The test photo is the public-domain astronaut portrait in tests/fixtures, placed on a textured
background at a size typical for each resolution (face about 1/4 of the height at 640x480; a
4000x3000 photo with the face at 1/6 of the height, plus a second smaller face). Baselines
measured in the same run: decoding the 4000x3000 JPEG (what reading the photo costs anyway) and
the 640x480 detection time. The first call, which loads the mediapipe models, is timed apart.

    python benchmarks/bench_detect.py [--repeats 5] [--min-face 40] [photo.jpg ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "astronaut.jpg"


def make_photo(width: int, height: int, faces: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """A photo of ``width`` x ``height`` with the fixture pasted at (cx, cy, face-crop side) fractions."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    photo = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo.astype(np.int16) + rng.integers(-12, 12, photo.shape), 0, 255).astype(np.uint8)
    src = cv2.imread(str(FIXTURE))
    for cx, cy, side_frac in faces:
        side = int(side_frac * height)
        patch = cv2.resize(src, (side, side), interpolation=cv2.INTER_CUBIC if side > src.shape[0] else cv2.INTER_AREA)
        x0, y0 = int(cx * width - side / 2), int(cy * height - side / 2)
        photo[y0 : y0 + side, x0 : x0 + side] = patch
    return photo


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="*", type=Path, help="extra photos to time")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-face", type=int, default=None)
    args = ap.parse_args()

    import cv2

    from kface_cli.face.detector import get_detector
    from kface_cli.face.imageio import decode_image, read_image

    detector = get_detector("detect", min_face=args.min_face)
    vga = make_photo(640, 480, [(0.5, 0.45, 0.5)])  # the fixture's face is ~0.2 of its side
    big = make_photo(4000, 3000, [(0.4, 0.4, 0.8), (0.8, 0.6, 0.3)])
    t = time.perf_counter()
    detector.detect(vga)
    first = time.perf_counter() - t

    ok, enc = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    decode_s, _ = timed(lambda: decode_image(enc.tobytes()), args.repeats)
    resize_s, _ = timed(lambda: cv2.resize(big, (640, 480), interpolation=cv2.INTER_AREA), args.repeats)
    vga_s, vga_faces = timed(lambda: detector.detect(vga), args.repeats)
    big_s, big_faces = timed(lambda: detector.detect(big), args.repeats)

    print(f"first call (loads mediapipe models + detects 640x480): {first * 1000:.0f} ms")
    print(f"{'input':28} {'faces':>5} {'ms/photo':>9} {'vs 640x480':>11} {'vs JPEG decode':>15}")
    rows = [("640x480", vga_faces, vga_s), ("4000x3000", big_faces, big_s)]
    for p in args.photos:
        img = read_image(p)
        s, faces = timed(lambda img=img: detector.detect(img), args.repeats)
        rows.append((f"{p.name} {img.shape[1]}x{img.shape[0]}", faces, s))
    for name, faces, s in rows:
        print(f"{name:28} {len(faces):5d} {s * 1000:9.1f} {s / vga_s:10.2f}x {s / decode_s:14.2f}x")
    print(
        f"\nbaselines: decode 4000x3000 JPEG {decode_s * 1000:.1f} ms; cv2.resize 4000x3000 -> 640x480 {resize_s * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
