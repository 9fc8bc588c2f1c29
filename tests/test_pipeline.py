"""Photo -> aligned faces: detection + norm_crop, already aligned crops, and their detection."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.geometry import similarity, transform_points

from kface_cli.errors import InputError
from kface_cli.face.align import ARCFACE_TEMPLATE, norm_crop
from kface_cli.face.detector import DetectedFace, get_detector
from kface_cli.face.pipeline import faces_in_image, load_aligned, may_be_aligned_crop, on_template

FIXTURE = Path(__file__).parent / "fixtures" / "astronaut.jpg"


class _FixedDetector:
    """A stand-in detector that returns known points (and records the path it was given)."""

    def __init__(self, points: list[np.ndarray]):
        self.points = points
        self.paths: list[Path | None] = []

    def detect(self, image: np.ndarray, path=None) -> list[DetectedFace]:
        self.paths.append(path)
        return [DetectedFace(box=(0.0, 0.0, 10.0, 10.0), score=0.9, points5=p.astype(np.float32)) for p in self.points]


def _face_like_aligned(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), (0, 0), 1.5)


def test_faces_in_image_aligns_each_detected_face(tmp_path):
    aligned = _face_like_aligned()
    m = similarity(2.5, -12, 200.0, 90.0)
    photo = cv2.warpAffine(aligned, m, (640, 480), flags=cv2.INTER_CUBIC)
    points = transform_points(ARCFACE_TEMPLATE, m)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), photo)
    det = _FixedDetector([points, points + 5])
    found = faces_in_image(path, det)
    assert det.paths == [path]  # the detector receives the path (for annotation files)
    assert len(found) == 2
    face, crop = found[0].face, found[0].crop
    assert found[0].method == "align"
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, norm_crop(photo, face.points5))  # the one alignment function
    inner = (slice(10, 102), slice(10, 102))
    assert np.abs(crop[inner].astype(float) - aligned[inner].astype(float)).mean() < 4.0
    # an array input works too (no path)
    assert len(faces_in_image(photo, _FixedDetector([points]))) == 1


def test_real_photo_gives_an_arcface_crop():
    found = faces_in_image(FIXTURE, get_detector("detect"))
    assert len(found) == 1
    crop = found[0].crop
    # the aligned crop holds a face where the template expects it: detect again on a padded copy
    padded = cv2.copyMakeBorder(
        cv2.resize(crop, (224, 224)), 112, 112, 112, 112, cv2.BORDER_CONSTANT, value=(128, 128, 128)
    )
    again = get_detector("detect").detect(padded)
    assert len(again) == 1
    points = (again[0].points5 - 112) / 2  # back to crop coordinates
    iod = np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0])
    assert (np.linalg.norm(points - ARCFACE_TEMPLATE, axis=1) / iod).max() < 0.2


def test_no_face_gives_empty_list(tmp_path):
    path = tmp_path / "wall.jpg"
    cv2.imwrite(str(path), np.full((200, 300, 3), 180, np.uint8))
    assert faces_in_image(path, get_detector("detect")) == []


def test_may_be_aligned_crop_and_on_template():
    assert may_be_aligned_crop(np.zeros((112, 112, 3), np.uint8))
    assert may_be_aligned_crop(np.zeros((224, 224, 3), np.uint8))
    assert not may_be_aligned_crop(np.zeros((112, 96, 3), np.uint8))
    assert not may_be_aligned_crop(np.zeros((512, 512, 3), np.uint8))
    assert on_template(ARCFACE_TEMPLATE, 112) and on_template(ARCFACE_TEMPLATE * 2, 224)
    iod = ARCFACE_TEMPLATE[1, 0] - ARCFACE_TEMPLATE[0, 0]
    assert on_template(ARCFACE_TEMPLATE + [0.25 * iod, 0], 112)
    assert not on_template(ARCFACE_TEMPLATE + [0.35 * iod, 0], 112)
    assert not on_template(ARCFACE_TEMPLATE * 0.5 + 30, 112)  # a smaller face elsewhere in the square


def test_square_head_and_shoulders_photo_is_detected():
    """A 224 px profile picture is a photo: its face is found and aligned, not the whole square used."""
    photo = cv2.resize(cv2.imread(str(FIXTURE)), (224, 224), interpolation=cv2.INTER_AREA)
    found = faces_in_image(photo, get_detector("detect"))
    assert len(found) == 1 and found[0].method == "align" and found[0].face.landmarks != "aligned-crop"
    x, y, w, h = found[0].face.box
    assert 30 < w < 100 and 30 < h < 100  # the face, not the 224 px square
    eyes = found[0].face.points5[:2]
    assert (x < eyes[:, 0]).all() and (eyes[:, 0] < x + w).all()  # the points on the face, not the torso
    assert faces_in_image(photo, get_detector("detect"), aligned=True)[0].method == "as-is"  # when told


@pytest.mark.parametrize("side", [112, 224])
def test_aligned_crop_is_proven_by_the_detector(side):
    """A crop that norm_crop made (at 112 and 224 px) is found on the template and used as it is."""
    face = faces_in_image(FIXTURE, get_detector("detect"))[0].face
    crop = norm_crop(cv2.imread(str(FIXTURE)), face.points5, side)
    found = faces_in_image(crop, get_detector("detect"))
    assert len(found) == 1 and found[0].method == "as-is" and found[0].face.landmarks == "aligned-crop"
    assert found[0].face.box == (0.0, 0.0, float(side), float(side))


def test_crops_of_kface_crop_and_split_are_used_without_detection(tmp_path):
    crop = _face_like_aligned(3)
    parts = (
        ("faces/Middle", "faces/Middle/crop.json"),
        ("split/val", "split/classes.csv"),
        ("split/test", "split/classes.csv"),
    )
    for folder, marker in parts:
        path = tmp_path / folder / "P1" / "a.png"
        if (tmp_path / marker).exists():
            (tmp_path / marker).unlink()
        path.parent.mkdir(parents=True)
        cv2.imwrite(str(path), crop)
        det = _FixedDetector([])  # finds nothing: only the folder says it is a crop
        assert faces_in_image(path, det) == []
        (tmp_path / marker).write_text("{}")
        calls = len(det.paths)
        found = faces_in_image(path, det)
        assert len(found) == 1 and found[0].method == "as-is" and len(det.paths) == calls  # not detected


def test_load_aligned_resizes_and_converts(tmp_path):
    crop = _face_like_aligned(1)
    big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    out = load_aligned(tmp_path / "big.png")
    assert out.shape == (112, 112, 3)
    assert np.abs(out.astype(float) - crop.astype(float)).mean() < 6.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    out = load_aligned(tmp_path / "grey.png")
    assert out.shape == (112, 112, 3)
    np.testing.assert_array_equal(out[:, :, 0], grey)
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((112, 150, 3), np.uint8))
    with pytest.raises(InputError, match="not a square"):
        load_aligned(tmp_path / "wide.png")


def _exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A phone-style JPEG: pixels stored turned 90 degrees counter-clockwise, EXIF orientation 6."""
    import struct

    stored = np.ascontiguousarray(np.rot90(upright, 1))
    ok, enc = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = (
        b"MM"
        + struct.pack(">HI", 42, 8)
        + struct.pack(">H", 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
        + struct.pack(">I", 0)
    )
    payload = b"Exif\x00\x00" + tiff
    data = enc.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


@pytest.mark.parametrize("kind", ["exif-jpeg", "grey-png", "rgba-png", "16bit-png"])
def test_odd_photo_formats_find_the_face(tmp_path, kind):
    photo = cv2.imread(str(FIXTURE))
    path = tmp_path / ("photo.jpg" if kind == "exif-jpeg" else "photo.png")
    if kind == "exif-jpeg":
        path.write_bytes(_exif_rotated_jpeg(photo))
    elif kind == "grey-png":
        cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    elif kind == "rgba-png":
        cv2.imwrite(str(path), np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]))
    else:
        cv2.imwrite(str(path), photo.astype(np.uint16) * 257)
    found = faces_in_image(path, get_detector("detect"))
    assert len(found) == 1
    face = found[0].face
    left_eye, right_eye = face.points5[0], face.points5[1]
    assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 10  # upright, not rotated


def test_crop_enroll_identify_and_evaluate_see_the_same_aligned_pixels(tmp_path, monkeypatch):
    """The one face path: the four commands turn the same photo into identical aligned pixels."""
    from helpers.embedders import FakeEmbedder
    from helpers.gallery import CODES, render_photo

    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify
    from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate_embedder
    from kface_cli.face import imageio
    from kface_cli.formats.pairs import Pair, write_pairs_csv
    from kface_cli.prepare.crop import CropConfig, crop

    class Recorder(FakeEmbedder):
        def __init__(self):
            super().__init__("pixels")
            self.seen: list[np.ndarray] = []

        def embed(self, faces, batch_size=64):
            self.seen += list(np.asarray(faces))
            return super().embed(faces, batch_size)

    frontal = render_photo(tmp_path / "src" / "민지" / "frontal.jpg", "19062531", CODES[2])
    profile = render_photo(tmp_path / "src" / "민지" / "profile.jpg", "19062531", ("S001", "L1", "E01", "C1"))
    photos = [frontal, profile]

    written: dict[str, np.ndarray] = {}
    real_write = imageio.write_image
    monkeypatch.setattr(
        imageio,
        "write_image",
        lambda path, image, **kw: (written.__setitem__(Path(path).stem, image), real_write(path, image, **kw)),
    )
    result = crop(tmp_path / "ws", raw_dir=tmp_path / "src", config=CropConfig(landmarks="annotation"))
    assert result.methods == {"align": 1, "box-fallback": 1}
    by_crop = [written["frontal"], written["profile"]]

    enrolled = Recorder()
    enroll_folder(tmp_path / "src", tmp_path / "g.h5", enrolled, landmarks="annotation")
    identified = Recorder()
    identify(photos, tmp_path / "g.h5", identified, landmarks="annotation")
    evaluated = Recorder()
    pairs = tmp_path / "pairs.csv"
    write_pairs_csv(pairs, [Pair(frontal, profile, True), Pair(profile, frontal, False)])
    evaluate_embedder(
        evaluated, EvaluateOptions(pairs=pairs, landmarks="annotation", workdir=tmp_path / "ws", write_report=False)
    )
    for seen in (enrolled.seen, identified.seen, evaluated.seen):
        assert len(seen) == 2
        for got, want in zip(seen, by_crop):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(by_crop[0], by_crop[1])


def test_one_rule_for_aligned_crops(tmp_path):
    """A 112 or 224 px square whose face lies on the template is used as it is; other faces are aligned."""
    crop = _face_like_aligned(2)
    det = _FixedDetector([ARCFACE_TEMPLATE])
    found = faces_in_image(crop, det)
    assert found[0].method == "as-is" and found[0].face.landmarks == "aligned-crop"
    np.testing.assert_array_equal(found[0].crop, crop)
    big = cv2.resize(crop, (224, 224))
    assert faces_in_image(big, _FixedDetector([ARCFACE_TEMPLATE * 2]))[0].crop.shape == (112, 112, 3)
    off = faces_in_image(crop, _FixedDetector([ARCFACE_TEMPLATE * 0.5 + 20]))  # a small face: a photo
    assert off[0].method == "align"
    forced = faces_in_image(crop, det, aligned=False)  # aligned=False: always detect, align
    assert forced[0].method == "align"
    odd = cv2.resize(crop, (160, 160))
    assert faces_in_image(odd, det, aligned=True)[0].method == "as-is"  # any square when told
    with pytest.raises(InputError, match="not a square"):
        faces_in_image(np.zeros((112, 150, 3), np.uint8), det, aligned=True)
    with pytest.raises(ValueError, match="detector"):
        faces_in_image(np.zeros((300, 400, 3), np.uint8))
