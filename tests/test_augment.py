"""Training augmentations: the spec, landmark jitter as a re-alignment, photometric changes, the dataset hook."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from geometry import transform_points

from kface_cli.errors import KFaceError
from kface_cli.face.align import ARCFACE_TEMPLATE, estimate_norm, norm_crop
from kface_cli.train.augment import _TEMPLATE_IOD, AUGMENTATIONS, Augment, parse_augment


def test_spec_parsing():
    assert not parse_augment("") and not parse_augment(None) and not parse_augment("none")
    a = parse_augment("jitter, colour=0.3,GREY")
    assert a == Augment(jitter=AUGMENTATIONS["jitter"][0], colour=0.3, grey=AUGMENTATIONS["grey"][0])
    assert parse_augment(a.spec()) == a
    for bad, message in (("wobble", "unknown augmentation"), ("blur=x", "not a number"), ("jitter=5", "outside")):
        with pytest.raises(KFaceError, match=message):
            parse_augment(bad)


def _photo_and_points():
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (300, 360, 3), dtype=np.uint8), (0, 0), 2)
    m = np.array([[1.8, -0.3, 80.0], [0.3, 1.8, 40.0]])
    return photo, transform_points(ARCFACE_TEMPLATE, m)


def test_landmark_jitter_is_the_alignment_of_perturbed_points():
    """Jittering the crop equals aligning the photo with the same perturbation of its five points."""
    photo, points = _photo_and_points()
    crop = norm_crop(photo, points)
    out = Augment(jitter=0.05)(crop, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same draws, in the same order
    moved = ARCFACE_TEMPLATE + rng.normal(0.0, 0.05 * _TEMPLATE_IOD, (5, 2))
    moved = moved.mean(axis=0) + (moved - moved.mean(axis=0)) * (1 + rng.uniform(-0.0, 0.0))
    moved += rng.uniform(-0.0, 0.0, 2) * 112
    m0 = estimate_norm(points)
    inverse = cv2.invertAffineTransform(m0)
    expected = norm_crop(photo, transform_points(moved, inverse))
    inner = (slice(16, 96), slice(16, 96))
    err = np.abs(out[inner].astype(float) - expected[inner]).mean()
    assert err < 1.5
    assert np.abs(out[inner].astype(float) - crop[inner]).mean() > 3 * err  # it did move


def test_photometric_augmentations():
    photo, points = _photo_and_points()
    face = norm_crop(photo, points)
    grey = Augment(grey=1.0)(face, np.random.default_rng(0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    blurred = Augment(blur=1.0)(face, np.random.default_rng(0))
    assert cv2.Laplacian(blurred, cv2.CV_64F).var() < cv2.Laplacian(face, cv2.CV_64F).var()
    coloured = Augment(colour=0.5)(face, np.random.default_rng(1))
    assert coloured.dtype == np.uint8 and coloured.shape == face.shape and not np.array_equal(coloured, face)
    assert Augment()(face, np.random.default_rng(0)) is face


def test_dataset_hook(tmp_path):
    from kface_cli.train.datasets import open_training_data

    photo, points = _photo_and_points()
    for ident in ("a", "b"):
        (tmp_path / ident).mkdir()
        cv2.imwrite(str(tmp_path / ident / "0.png"), norm_crop(photo, points))
    plain = open_training_data(tmp_path, flip=False)
    assert plain.augment is None
    np.testing.assert_array_equal(plain[(0, False)][0], plain[(0, False)][0])
    augmented = open_training_data(tmp_path, flip=False, augment="jitter,colour")
    assert augmented.augment == parse_augment("jitter,colour")
    # the training loop's read: augmentation keyed by (seed, epoch) and the index, nothing else
    x1, x2 = augmented[(0, False, (7, 1))][0], augmented[(0, False, (7, 1))][0]
    assert x1.shape == (3, 112, 112)
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, augmented[(0, False, (7, 2))][0])  # another epoch, another draw
    assert not np.array_equal(x1, plain[(0, False)][0])  # it is augmented
    # (i, flip) reads the stored face, never augmented (BatchNorm recalibration reads it)
    np.testing.assert_array_equal(augmented[(0, False)][0], plain[(0, False)][0])
    # ds[i] draws from torch's generator: two reads differ
    assert not np.array_equal(augmented[0][0], augmented[0][0])
    with pytest.raises(KFaceError):
        open_training_data(tmp_path, augment="wobble")


def test_auto_is_the_folder_recipe_and_none_elsewhere():
    from kface_cli.train.augment import FOLDER_DEFAULT, resolve_augment
    from kface_cli.train.config import TrainConfig
    from kface_cli.train.datasets import open_training_data

    assert TrainConfig().augment == "auto"
    assert resolve_augment("auto", folder=True) == FOLDER_DEFAULT == resolve_augment(None, folder=True)
    assert resolve_augment("auto", folder=False) == "none"
    assert resolve_augment("none", folder=True) == "none" and resolve_augment("jitter", folder=True) == "jitter"
    with pytest.raises(KFaceError):
        resolve_augment("wobble", folder=True)
    assert parse_augment(FOLDER_DEFAULT).jitter > 0 and parse_augment(FOLDER_DEFAULT).colour > 0
    assert open_training_data("synthetic:3x2", augment="auto").augment is None
