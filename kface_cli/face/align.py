"""ArcFace alignment: the 112x112 template and the similarity warp. The only copy in kface.

Every stage that turns a face into network input (crop, enroll, identify, evaluate, train-time
validation) calls :func:`norm_crop`, so training and inference see faces aligned the same way.
It reproduces insightface's ``norm_crop``: a least-squares similarity transform (rotation, uniform
scale, translation; Umeyama 1991) from the 5 points to the template, bilinear warp, black border.
"""

from __future__ import annotations

import numpy as np

from kface_cli.defaults import FACE_SIZE

#: ArcFace 112x112 template (x, y): image-left eye, image-right eye, nose tip,
#: image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


INSIGHTFACE_ALT_SIZE, INSIGHTFACE_ALT_SHIFT = 128, 8.0  # insightface's 128-based crops: template shifted right


def template_for(size: int = FACE_SIZE) -> np.ndarray:
    """The template for a ``size`` x ``size`` crop, as insightface's ``estimate_norm`` makes it.

    A multiple of 112: the template times ``size / 112``. A multiple of 128 (and not of 112):
    the template times ``ratio = size / 128``, shifted right by ``8 * ratio`` pixels (the face
    stays centred in the wider crop). Other sizes (insightface refuses them) scale by ``size / 112``.
    """
    if size % FACE_SIZE and not size % INSIGHTFACE_ALT_SIZE:
        ratio = size / INSIGHTFACE_ALT_SIZE
        return ARCFACE_TEMPLATE * ratio + [INSIGHTFACE_ALT_SHIFT * ratio, 0.0]
    return ARCFACE_TEMPLATE * (size / FACE_SIZE)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (both (N, 2)).

    Returns the 2x3 matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]``. Reflections are
    excluded (det > 0), as in Umeyama's paper and skimage's SimilarityTransform.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    cov = dst_c.T @ src_c / n  # (2, 2)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(cov)
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    if var_src <= 1e-12:
        raise ValueError("source points are degenerate (all at one place)")
    scale = (s * d).sum() / var_src
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - scale * rot @ src_mean
    return m


def estimate_norm(points5: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The 2x3 similarity matrix that maps 5 ArcFace-ordered points onto the template."""
    points5 = np.asarray(points5, dtype=np.float64).reshape(5, 2)
    return umeyama_similarity(points5, template_for(size))


def norm_crop(image: np.ndarray, points5: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Warp ``image`` so that the 5 landmarks land on the ArcFace template: a ``size`` x ``size`` crop."""
    import cv2

    m = estimate_norm(points5, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def resize_crop(image: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Resize a crop to ``size`` x ``size`` (area averaging when shrinking, bilinear when growing).

    The one way kface brings crops of another size (224x224 aligned faces, face boxes, .bin
    images) to network input size; a crop already at ``size`` is returned as it is.
    """
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    shrinking = h > size or w > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def box_crop(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int = FACE_SIZE,
    margin: float = 0.0,
    square: bool = False,
) -> np.ndarray:
    """Cut ``box`` (x, y, w, h) out of ``image`` (black outside), grown by ``margin``, resized to ``size``.

    ``margin``: fraction of the box added on every side; ``square``: grow the short side to the
    long one. The face-box crop of profiles (see :func:`is_degenerate`) and of ``kface crop --mode box``.
    """
    import cv2

    from kface_cli.errors import InputError

    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise InputError(f"face box has zero size ({w:g}x{h:g})")
    cx, cy = x + w / 2, y + h / 2
    if square:
        w = h = max(w, h)
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    x1, y1 = x0 + max(int(round(w)), 1), y0 + max(int(round(h)), 1)
    H, W = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return resize_crop(image[y0:y1, x0:x1], size)


def is_degenerate(points5: np.ndarray, min_eye_distance: float = 4.0, min_ratio: float = 0.25) -> bool:
    """True when 5 points cannot define a sensible similarity alignment (profile views).

    In a profile both eyes (and both mouth corners) nearly coincide. We call the points degenerate
    when the eye distance is under ``min_eye_distance`` pixels or under ``min_ratio`` times the
    eye-to-mouth distance (a frontal face has a ratio of about 1.2; a 60-degree yaw about 0.5).
    """
    p = np.asarray(points5, dtype=np.float64).reshape(5, 2)
    eye_dist = float(np.linalg.norm(p[1] - p[0]))
    eye_mid = (p[0] + p[1]) / 2
    mouth_mid = (p[3] + p[4]) / 2
    eye_mouth = float(np.linalg.norm(mouth_mid - eye_mid))
    if eye_dist < min_eye_distance:
        return True
    return eye_mouth > 0 and eye_dist / eye_mouth < min_ratio
