"""Pair embedding: each unique image once, aligned crops as they are, photos through the pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from evaldata import FakeEmbedder, make_identities, make_pairs

from kface_cli.embedding import photos as P
from kface_cli.errors import InputError


def test_embed_pairs_embeds_each_unique_image_once_and_matches_per_pair_distances(tmp_path):
    by_id = make_identities(tmp_path, n_ids=4)
    pairs = make_pairs(by_id)
    emb = FakeEmbedder()
    dist, issame = P.embed_pairs(emb, pairs, batch_size=5)
    unique = {p.path1 for p in pairs} | {p.path2 for p in pairs}
    assert emb.embedded == len(unique)
    assert issame.tolist() == [p.same for p in pairs]
    ref = FakeEmbedder()
    for k in (0, 7, len(pairs) - 1):
        a = ref.embed(cv2.imread(str(pairs[k].path1))[None])[0]
        b = ref.embed(cv2.imread(str(pairs[k].path2))[None])[0]
        assert dist[k] == pytest.approx(float(np.sum((a - b) ** 2)), abs=1e-5)
    assert dist.dtype == np.float64 and (dist >= 0).all() and (dist <= 4 + 1e-6).all()


def test_prepared_faces_are_not_loaded_again(tmp_path):
    pairs = make_pairs(make_identities(tmp_path, n_ids=3))
    calls = []

    class CountingLoader(P.FaceLoader):
        def __call__(self, path):
            calls.append(path)
            return super().__call__(path)

    prepared = P.prepare_pairs(pairs, loader=CountingLoader())
    n_loaded = len(calls)
    d1, _ = P.embed_pairs(FakeEmbedder(), prepared)
    d2, _ = P.embed_pairs(FakeEmbedder(), prepared)
    assert len(calls) == n_loaded == len(prepared.names)
    np.testing.assert_array_equal(d1, d2)


def test_photos_go_through_detection_and_alignment_and_faceless_pairs_are_rejected(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((230, 346, 3), 200, np.uint8))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((230, 346, 3), 0, np.uint8))
    crop = tmp_path / "faces" / "P1" / "crop.png"  # in a `kface crop` output: used as it is
    crop.parent.mkdir(parents=True)
    (tmp_path / "faces" / "crop.json").write_text("{}")
    cv2.imwrite(str(crop), np.full((112, 112, 3), 200, np.uint8))
    seen = []
    from kface_cli.face import detector as detect
    from kface_cli.face.align import ARCFACE_TEMPLATE

    class Detector:  # a face at a known place in every non-black photo
        def __init__(self, landmarks):
            self.landmarks = landmarks

        def detect(self, image, path=None):
            seen.append((path.name, self.landmarks))
            points = (ARCFACE_TEMPLATE + [100, 50]).astype(np.float32)
            return [] if image.max() == 0 else [detect.DetectedFace((100, 50, 112, 112), 0.9, points)]

    monkeypatch.setattr(detect, "get_detector", lambda landmarks="auto": Detector(landmarks))
    dist, issame = P.embed_pairs(FakeEmbedder(), [(photo, crop, True), (blank, crop, True), (blank, photo, False)])
    assert seen == [("photo.png", "auto"), ("blank.png", "auto")]  # the crop is used as it is
    assert dist[0] == pytest.approx(0.0, abs=1e-6)  # the photo's aligned face equals the crop
    assert dist[1] == P.FAILED_DISTANCE and dist[2] == P.FAILED_DISTANCE


def test_embed_paths_uses_and_fills_the_cache(tmp_path):
    by_id = make_identities(tmp_path, n_ids=2)
    paths = [p for ps in by_id.values() for p in ps]
    emb = FakeEmbedder()
    cache = {}
    e1, ok1 = P.embed_paths(emb, paths[:3], cache=cache)
    e2, ok2 = P.embed_paths(emb, paths, cache=cache)
    assert ok1.all() and ok2.all() and emb.embedded == len(paths)
    np.testing.assert_array_equal(e1, e2[:3])
    assert np.allclose(np.linalg.norm(e2, axis=1), 1.0, atol=1e-5)


def test_identity_folder_listing_and_errors(tmp_path):
    by_id = make_identities(tmp_path / "g", n_ids=2)
    (tmp_path / "g" / "notes.txt").write_text("ignored")
    items = P.list_identity_folder(tmp_path / "g")
    assert [lab for lab, _ in items] == sorted(lab for lab, ps in by_id.items() for _ in ps)
    with pytest.raises(InputError, match="folder not found"):
        P.list_identity_folder(tmp_path / "missing")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        P.list_identity_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="empty"):
        P.prepare_pairs([])
