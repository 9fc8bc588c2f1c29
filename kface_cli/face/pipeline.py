"""From a photo (or an already aligned crop) to 112x112 ArcFace-aligned faces.

The one path every stage uses at inference time (enroll, identify, evaluate)::

    detector = get_detector("auto")
    for face, crop in faces_in_image("party.jpg", detector):   # largest face first
        ...  # face.box, face.score, face.points5; crop: (112, 112, 3) BGR uint8

Alignment is always :func:`kface_cli.face.align.norm_crop` (the function the crop stage uses),
so training and inference see faces aligned the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kface_cli.defaults import ALIGNED_CROP_SIDES, FACE_SIZE
from kface_cli.errors import InputError
from kface_cli.face.align import norm_crop, resize_crop
from kface_cli.face.detect import DetectedFace, Detector
from kface_cli.face.imageio import read_image


def faces_in_image(
    path_or_image: str | Path | np.ndarray, detector: Detector, size: int = FACE_SIZE
) -> list[tuple[DetectedFace, np.ndarray]]:
    """Detect the faces of a photo and align each one: ``[(DetectedFace, (size, size, 3) BGR uint8)]``.

    ``path_or_image``: a file path (read with EXIF orientation, grey/RGBA/16-bit converted; the
    sidecar detector needs the path) or a BGR uint8 array. Faces come largest first; an image
    without faces gives an empty list.
    """
    if isinstance(path_or_image, np.ndarray):
        image, path = path_or_image, None
    else:
        path = Path(path_or_image)
        image = read_image(path)
    faces = detector.detect(image, path=path)
    return [(face, norm_crop(image, face.points5, size)) for face in faces]


def is_aligned_crop(image: np.ndarray) -> bool:
    """True for images that look like aligned face crops rather than photos: square, 112 or 224 px.

    Such images (insightface-style datasets, ``kface crop`` output) are used as they are, without
    detection. Photos of other sizes go through :func:`faces_in_image`.
    """
    h, w = np.asarray(image).shape[:2]
    return h == w and h in ALIGNED_CROP_SIDES


def load_aligned(path: str | Path, size: int = FACE_SIZE) -> np.ndarray:
    """Read an already aligned face crop as (size, size, 3) BGR uint8 (other sizes are resized).

    Greyscale crops (e.g. insightface's sample Tom_Hanks_54745.png) become 3-channel. A crop that
    is not square cannot be aligned by resizing and raises :class:`InputError`.
    """
    image = read_image(path)
    h, w = image.shape[:2]
    if h != w:
        raise InputError(
            f"{path} is {w}x{h}, not a square aligned face crop",
            hint="Pass photos through face detection (faces_in_image), or crop faces with `kface crop`.",
        )
    return resize_crop(image, size)
