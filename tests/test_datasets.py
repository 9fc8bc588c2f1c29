"""Training datasets: identity folders and insightface .rec give the same items."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kface_cli.errors import InputError
from kface_cli.face.preprocess import faces_to_input
from kface_cli.train.datasets import ArrayDataset, FolderDataset, RecordDataset, open_training_data


def _faces(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 112, 112, 3), dtype=np.uint8)


def _write_tree(root, faces, ids):
    import cv2

    for k, (img, ident) in enumerate(zip(faces, ids)):
        d = root / ident
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{ident}_{k}.png"), img)  # lossless, so pixels compare exactly


def test_folder_dataset_counts_classes_in_sorted_order(tmp_path):
    faces = _faces(5)
    _write_tree(tmp_path, faces, ["b", "a", "b", "c", "a"])
    (tmp_path / "empty").mkdir()
    ds = FolderDataset(tmp_path, flip=False)
    assert ds.num_classes == 3 and ds.classes == ["a", "b", "c"]
    assert len(ds) == 5
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1, 2]
    x, y = ds[0]  # a/a_1.png
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and y == 0
    torch.testing.assert_close(x, torch.from_numpy(faces_to_input(faces[1][None])[0]))
    lazy = FolderDataset(tmp_path, flip=False, preload=False)
    torch.testing.assert_close(lazy[3][0], ds[3][0])


@pytest.mark.slow
def test_flip_mirrors_about_half_the_items():
    faces = _faces(1)
    ds = ArrayDataset(np.repeat(faces, 200, axis=0), [0] * 200, flip=True)
    torch.manual_seed(0)
    plain = torch.from_numpy(faces_to_input(faces)[0])
    flipped = sum(bool(torch.equal(ds[i][0], torch.flip(plain, dims=[2]))) for i in range(200))
    assert 70 < flipped < 130
    # the training loop passes the flip decision explicitly: (index, flip)
    torch.testing.assert_close(ds[(0, True)][0], torch.flip(plain, dims=[2]))
    torch.testing.assert_close(ds[(0, False)][0], plain)


def test_record_dataset_matches_folder(tmp_path):
    import cv2

    from kface_cli.formats.recordio import RecordHeader, RecordIOWriter, pack

    faces = _faces(4, seed=1)
    labels = [0, 1, 1, 0]
    with RecordIOWriter(tmp_path / "train.rec") as w:
        for k, (img, y) in enumerate(zip(faces, labels)):
            w.write(k, pack(RecordHeader(0, float(y), k, 0), cv2.imencode(".png", img)[1].tobytes()))
    (tmp_path / "property").write_text("2,112,112")
    ds = open_training_data(tmp_path, flip=False)
    assert isinstance(ds, RecordDataset) and ds.num_classes == 2 and len(ds) == 4
    for k in range(4):
        x, y = ds[k]
        assert y == labels[k]
        torch.testing.assert_close(x, torch.from_numpy(faces_to_input(faces[k][None])[0]))


def test_missing_or_empty_data_is_a_user_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_training_data(tmp_path / "nope")
    with pytest.raises(InputError, match="no identity folders"):
        open_training_data(tmp_path)


def test_synthetic_data_for_throughput_checks():
    ds = open_training_data("synthetic:5x3", flip=False)
    assert len(ds) == 15 and ds.num_classes == 5 and sorted(set(ds.labels.tolist())) == [0, 1, 2, 3, 4]
    x, y = ds[4]
    assert x.shape == (3, 112, 112) and y == 1 and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with pytest.raises(InputError, match="synthetic:<identities>x"):
        open_training_data("synthetic:lots")


def test_photos_that_were_never_cropped_are_refused_with_a_hint(tmp_path):
    """Whole photos would be squashed to 112 px: train refuses them unless told to resize."""
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.errors import InputError

    faces = _faces(4)
    _write_tree(tmp_path / "crops", faces, ["a", "a", "b", "b"])
    assert FolderDataset(tmp_path / "crops", flip=False, resize=False).num_classes == 2  # crops are fine
    photos = tmp_path / "my_photos"
    for name in ("a", "b"):
        (photos / name).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(photos / name / f"{k}.jpg"), np.full((300, 200, 3), 90 + k, np.uint8))
    with pytest.raises(InputError, match=r"4 of 4 training images .* are not 112x112 face crops .*200x300"):
        FolderDataset(photos, flip=False, resize=False)
    assert len(FolderDataset(photos, flip=False, resize=True)) == 4  # on purpose: resized
    r = CliRunner().invoke(
        app, ["train", "--data", str(photos), "--network", "mbf", "--epochs", "1", "-w", str(tmp_path / "ws")]
    )
    assert r.exit_code == 2 and "kface crop" in r.output and "--resize-images" in r.output
