"""2-D similarity transforms for the alignment tests (face points placed in a photo by a known matrix)."""

from __future__ import annotations

import math

import numpy as np


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    """The 2x3 matrix that scales, rotates by ``degrees`` and then translates by (tx, ty)."""
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]
