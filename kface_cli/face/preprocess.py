"""Network input preprocessing: the one place that turns aligned crops into model input.

insightface's convention: RGB, 112x112, pixel values mapped with (x / 255 - 0.5) / 0.5, NCHW.
Our images are BGR uint8 (OpenCV), so the channels are reversed here.
"""

from __future__ import annotations

import numpy as np

from kface_cli.defaults import FACE_SIZE

MEAN = 127.5
STD = 127.5
#: Recorded in fingerprints and model metadata.
PREPROCESS_SPEC = f"rgb;{FACE_SIZE}x{FACE_SIZE};(x-{MEAN})/{STD};nchw;arcface-template"


def faces_to_input(faces_bgr: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) BGR uint8 -> (N, 3, 112, 112) float32 RGB in [-1, 1]."""
    faces = np.asarray(faces_bgr)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) BGR images, got shape {faces.shape}")
    x = faces[..., ::-1].astype(np.float32)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
