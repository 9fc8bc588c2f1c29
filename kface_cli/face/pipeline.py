"""From a photo (or an already aligned crop) to 112x112 ArcFace-aligned faces: the one face path.

Every stage that turns a photo into faces (crop, enroll, identify, evaluate) calls
:func:`faces_in_image`, so a face is never prepared two ways::

    detector = get_detector("auto")
    for found in faces_in_image("party.jpg", detector):   # largest face first
        ...  # found.face.box, .score, .points5, .landmarks; found.crop: (112, 112, 3) BGR uint8

An image is used as an aligned crop (as it is, resized to ``size``, without alignment) only when
the caller says so (``aligned=True``: any square image, e.g. ``--aligned``) or when a check proves
it (``aligned=None``, the default):

* the image lies in a folder written by ``kface crop`` (its ``crop.json`` beside the person
  folders) or in the ``train``/``val`` parts of a ``kface split`` (:func:`in_crop_folder`); or
* it is a square of 112 or 224 pixels (:func:`may_be_aligned_crop`) and the detector finds a face
  in it whose five points lie on the ArcFace template (mean distance at most
  :data:`TEMPLATE_TOLERANCE` of the template's eye distance, :func:`on_template`). Tight crops
  that the detector misses are searched again with a border around them.

Everything else goes through the detector, a square 224 px head-and-shoulders photo included
(its face's points lie far from the template), and each face through :func:`align_face`:
:func:`kface_cli.face.align.norm_crop` on its five points, or, when the points are degenerate
(profiles: both eyes at one spot, :func:`kface_cli.face.align.is_degenerate`), a square crop of
its face box. ``aligned=False`` always detects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kface_cli.defaults import ALIGNED_CROP_SIDES, CROP_SETTINGS_FILE, FACE_SIZE, SPLIT_CLASSES_FILE, SPLIT_PARTS
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
#: A face is on the ArcFace template when its five points lie, on average, within this fraction of
#: the template's eye distance of the template's. Measured with this detector on crops that
#: norm_crop made from the five reference photos of ../shared/faces and on insightface's aligned
#: sample (Tom Hanks, 112 px): mean 0.04-0.15 (largest single point 0.31); the same faces in
#: 224 px head-and-shoulders photos (face box ~30% of the side): mean 0.8-1.0.
TEMPLATE_TOLERANCE = 0.3


@dataclass(frozen=True)
class AlignedFace:
    """One face of a photo: where it was found and its ``size`` x ``size`` BGR uint8 crop."""

    face: DetectedFace
    crop: np.ndarray
    method: str


def may_be_aligned_crop(image: np.ndarray) -> bool:
    """Square, 112 or 224 pixels: the sizes of aligned crops, checked by :func:`faces_in_image`."""
    h, w = np.asarray(image).shape[:2]
    return h == w and h in ALIGNED_CROP_SIDES


def on_template(points5: np.ndarray, side: int) -> bool:
    """Whether five points lie on the ArcFace template of a ``side`` x ``side`` crop (:data:`TEMPLATE_TOLERANCE`)."""
    template = template_for(side)
    eye_distance = float(np.linalg.norm(template[1] - template[0]))
    points = np.asarray(points5, dtype=np.float64).reshape(5, 2)
    return float(np.linalg.norm(points - template, axis=1).mean()) <= TEMPLATE_TOLERANCE * eye_distance


def in_crop_folder(path: str | Path | None) -> bool:
    """Whether ``path`` is a face ``kface crop`` wrote (``OUT/<person>/x.jpg`` beside ``OUT/crop.json``)
    or one of a ``kface split``'s crops (``split/train|val|test/<person>/x.jpg`` beside ``split/classes.csv``)."""
    if path is None:
        return False
    parents = Path(path).absolute().parents
    if len(parents) > 1 and (parents[1] / CROP_SETTINGS_FILE).is_file():
        return True
    return len(parents) > 2 and parents[1].name in SPLIT_PARTS and (parents[2] / SPLIT_CLASSES_FILE).is_file()


def _whole(image: np.ndarray, size: int, score: float = float("nan")) -> AlignedFace:
    h, w = image.shape[:2]
    whole = DetectedFace(
        box=(0.0, 0.0, float(w), float(h)),
        score=score,
        points5=template_for(w).astype(np.float32),
        landmarks=LANDMARKS_AS_IS,
    )
    return AlignedFace(whole, resize_crop(image, size), METHOD_AS_IS)


def _on_template_face(image: np.ndarray, faces: list[DetectedFace], detector: Detector) -> DetectedFace | None:
    """The one detected face that lies on the ArcFace template of a square image, or None.

    A tight crop that the detector misses is searched again inside a border of half its side.
    """
    side = image.shape[0]
    if not faces:
        import cv2

        pad = side // 2
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = [
            DetectedFace(f.box, f.score, f.points5 - np.float32(pad), f.landmarks, f.low_light)
            for f in detector.detect(padded)
        ]
    matching = [f for f in faces if on_template(f.points5, side)]
    return matching[0] if len(matching) == 1 else None


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
    the photo). ``aligned``: None checks whether the image is an aligned crop (module docstring);
    True uses any square image as it is; False always detects. An image without faces gives an
    empty list.
    """
    if isinstance(source, np.ndarray):
        image = source
    else:
        path = Path(source)
        image = read_image(path)
    if aligned is None and may_be_aligned_crop(image) and in_crop_folder(path):
        aligned = True
    if aligned:
        h, w = image.shape[:2]
        if h != w:
            raise InputError(
                f"{path or 'the image'} is {w}x{h}, not a square aligned face crop",
                hint="Pass photos through face detection (leave out --aligned), or crop faces with `kface crop`.",
            )
        return [_whole(image, size)]
    if detector is None:
        raise ValueError("a photo that is not a known aligned crop needs a detector")
    faces = detector.detect(image, path=path)
    if aligned is None and may_be_aligned_crop(image):
        face = _on_template_face(image, faces, detector)
        if face is not None:
            return [_whole(image, size, face.score)]
    return [AlignedFace(face, *align_face(image, face, size)) for face in faces]


def load_aligned(path: str | Path, size: int = FACE_SIZE) -> np.ndarray:
    """Read an already aligned (square) face crop as (size, size, 3) BGR uint8."""
    return faces_in_image(path, aligned=True, size=size)[0].crop
