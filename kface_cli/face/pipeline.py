"""From a photo (or an already aligned crop) to 112x112 ArcFace-aligned faces: the one face path.

Every stage that turns a photo into faces (crop, enroll, identify, evaluate) calls
:func:`faces_in_image`, so a face is never prepared two ways::

    detector = get_detector("auto")
    for found in faces_in_image("party.jpg", detector):   # largest face first
        ...  # found.face.box, .score, .points5, .landmarks; found.crop: (112, 112, 3) BGR uint8

One rule says what is already an aligned crop (:func:`is_aligned_crop`: a square image of 112 or
224 pixels, e.g. ``kface crop`` output or insightface datasets): such an image is used as it is
(resized to ``size``), without detection; ``aligned=True`` forces that for any square image,
``aligned=False`` forces detection. Every other photo goes through the detector, and each face
through :func:`align_face`: :func:`kface_cli.face.align.norm_crop` on its five points, or, when the
points are degenerate (profiles: both eyes at one spot, :func:`kface_cli.face.align.is_degenerate`),
a square crop of its face box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kface_cli.defaults import ALIGNED_CROP_SIDES, FACE_SIZE
from kface_cli.errors import InputError
from kface_cli.face.align import box_crop, is_degenerate, norm_crop, resize_crop, template_for
from kface_cli.face.detector import DetectedFace, Detector
from kface_cli.face.imageio import read_image

#: How a face was turned into its crop (``AlignedFace.method``).
METHOD_ALIGN = "align"  # similarity warp of the 5 points onto the ArcFace template
METHOD_BOX_FALLBACK = "box-fallback"  # degenerate points (profile): square face-box crop
METHOD_AS_IS = "as-is"  # the image already was an aligned crop
#: ``DetectedFace.landmarks`` of an image used as it is.
LANDMARKS_AS_IS = "aligned-crop"


@dataclass(frozen=True)
class AlignedFace:
    """One face of a photo: where it was found and its ``size`` x ``size`` BGR uint8 crop."""

    face: DetectedFace
    crop: np.ndarray
    method: str


def is_aligned_crop(image: np.ndarray) -> bool:
    """The one rule: square, 112 or 224 pixels: an aligned face crop rather than a photo."""
    h, w = np.asarray(image).shape[:2]
    return h == w and h in ALIGNED_CROP_SIDES


def align_face(image: np.ndarray, face: DetectedFace, size: int = FACE_SIZE) -> tuple[np.ndarray, str]:
    """``(crop, method)``: the 5-point ArcFace alignment, or the square face box for degenerate points."""
    if is_degenerate(face.points5):
        return box_crop(image, face.box, size, square=True), METHOD_BOX_FALLBACK
    return norm_crop(image, face.points5, size), METHOD_ALIGN


def faces_in_image(
    source: str | Path | np.ndarray,
    detector: Detector | None = None,
    *,
    aligned: bool | None = None,
    size: int = FACE_SIZE,
    path: str | Path | None = None,
) -> list[AlignedFace]:
    """The faces of a photo, largest first, each aligned to ``size`` x ``size``.

    ``source``: a file path (read with EXIF orientation, grey/RGBA/16-bit converted) or a BGR
    uint8 array (then ``path``, if given, lets the annotation landmarks find the ``.txt`` beside
    the photo). ``aligned``: None applies :func:`is_aligned_crop`; True uses any square image as
    it is; False always detects. An image without faces gives an empty list.
    """
    if isinstance(source, np.ndarray):
        image = source
    else:
        path = Path(source)
        image = read_image(path)
    if aligned is None:
        aligned = is_aligned_crop(image)
    if aligned:
        h, w = image.shape[:2]
        if h != w:
            raise InputError(
                f"{path or 'the image'} is {w}x{h}, not a square aligned face crop",
                hint="Pass photos through face detection (leave out --aligned), or crop faces with `kface crop`.",
            )
        whole = DetectedFace(
            box=(0.0, 0.0, float(w), float(h)),
            score=float("nan"),
            points5=template_for(w).astype(np.float32),
            landmarks=LANDMARKS_AS_IS,
        )
        return [AlignedFace(whole, resize_crop(image, size), METHOD_AS_IS)]
    if detector is None:
        raise ValueError("a photo that is not an aligned crop needs a detector")
    return [AlignedFace(face, *align_face(image, face, size)) for face in detector.detect(image, path=path)]


def load_aligned(path: str | Path, size: int = FACE_SIZE) -> np.ndarray:
    """Read an already aligned (square) face crop as (size, size, 3) BGR uint8."""
    return faces_in_image(path, aligned=True, size=size)[0].crop
