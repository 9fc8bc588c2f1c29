"""ArcFace alignment: exact recovery of a known similarity transform, and the warp itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers.geometry import similarity, transform_points

from kface_cli.face.align import (
    ARCFACE_TEMPLATE,
    estimate_norm,
    is_degenerate,
    norm_crop,
    template_for,
    umeyama_similarity,
)


@pytest.mark.parametrize(
    ("scale", "angle", "tx", "ty"),
    [(1.0, 0.0, 0.0, 0.0), (2.7, 17.0, 300.0, 120.0), (0.6, -40.0, 15.0, 400.0), (4.0, 170.0, 900.0, 700.0)],
)
def test_estimate_norm_inverts_a_known_similarity_exactly(scale, angle, tx, ty):
    m = similarity(scale, angle, tx, ty)  # template -> photo
    photo_points = transform_points(ARCFACE_TEMPLATE, m)
    back = estimate_norm(photo_points)  # photo -> template
    np.testing.assert_allclose(transform_points(photo_points, back), ARCFACE_TEMPLATE, atol=1e-9)
    full = np.vstack([m, [0, 0, 1]])
    np.testing.assert_allclose(back, np.linalg.inv(full)[:2], atol=1e-9)


def test_umeyama_least_squares_and_no_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    mirrored = src * [-1, 1]
    m = umeyama_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0, "a similarity must not reflect"
    # with noise, the fit is the least-squares one: no nearby transform does better
    true = similarity(1.3, 25, 10, -5)
    noisy = transform_points(src, true) + rng.normal(0, 0.5, (5, 2))
    fit = umeyama_similarity(src, noisy)
    best = ((transform_points(src, fit) - noisy) ** 2).sum()
    for d in np.eye(6).reshape(6, 2, 3) * 1e-3:
        assert ((transform_points(src, fit + d) - noisy) ** 2).sum() >= best - 1e-12
    with pytest.raises(ValueError):
        umeyama_similarity(np.ones((5, 2)), src)


def test_norm_crop_undoes_the_warp():
    rng = np.random.default_rng(1)
    aligned = cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), (0, 0), 2.0)
    m = similarity(3.0, 20.0, 250.0, 80.0)  # template (112x112 crop) -> photo
    photo = cv2.warpAffine(aligned, m, (700, 600), flags=cv2.INTER_CUBIC)
    points = transform_points(ARCFACE_TEMPLATE, m)
    crop = norm_crop(photo, points)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    inner = (slice(8, 104), slice(8, 104))
    diff = np.abs(crop[inner].astype(float) - aligned[inner].astype(float))
    assert diff.mean() < 3.0


def test_template_scales_with_crop_size():
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2)
    # insightface's estimate_norm: multiples of 128 scale by size/128 and shift x by 8*ratio
    want_128 = ARCFACE_TEMPLATE.copy()
    want_128[:, 0] += 8.0
    np.testing.assert_allclose(template_for(128), want_128)
    want_256 = ARCFACE_TEMPLATE * 2
    want_256[:, 0] += 16.0
    np.testing.assert_allclose(template_for(256), want_256)
    np.testing.assert_allclose(template_for(896), ARCFACE_TEMPLATE * 8)  # 7 x 128 = 8 x 112: the 112 rule wins
    m = similarity(2.0, 0, 30, 40)
    crop = norm_crop(np.zeros((400, 400, 3), np.uint8), transform_points(ARCFACE_TEMPLATE, m), size=224)
    assert crop.shape == (224, 224, 3)


def test_profile_points_are_degenerate():
    assert not is_degenerate(ARCFACE_TEMPLATE)
    profile = ARCFACE_TEMPLATE.copy()
    profile[1] = profile[0] + [2.0, 0.0]  # both eyes at one place
    assert is_degenerate(profile)
