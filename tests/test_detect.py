"""Face detection: mediapipe on a real public-domain photo, large/rotated/multi-face inputs, sidecars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kface_cli.errors import InputError, KFaceError
from kface_cli.face.detector import DetectedFace, get_detector
from kface_cli.face.imageio import read_image

FIXTURE = Path(__file__).parent / "fixtures" / "astronaut.jpg"
# MTCNN's points on the 512x512 original, scaled to the 320x320 fixture (see fixtures/README.md);
# ArcFace order: image-left eye, image-right eye, nose, image-left mouth corner, image-right one.
REFERENCE_POINTS = np.array([[126.875, 63.125], [153.75, 64.375], [140.0, 80.0], [125.625, 86.875], [152.5, 88.125]])
IOD = float(np.linalg.norm(REFERENCE_POINTS[1] - REFERENCE_POINTS[0]))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_image(FIXTURE)


@pytest.fixture(scope="module")
def detector():
    return get_detector("detect")


def _errors(face: DetectedFace, ref: np.ndarray, iod: float) -> np.ndarray:
    return np.linalg.norm(face.points5 - ref, axis=1) / iod


def test_finds_the_astronaut_with_landmarks_near_the_reference(photo, detector):
    faces = detector.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    assert face.points5.shape == (5, 2) and face.points5.dtype == np.float32
    assert face.landmarks == "mesh"
    assert 0.5 <= face.score <= 1.0
    err = _errors(face, REFERENCE_POINTS, IOD)
    assert err.max() < 0.10, f"landmark errors (fraction of inter-ocular distance): {err}"
    x, y, w, h = face.box
    inside = (face.points5[:, 0] >= x - 0.1 * w) & (face.points5[:, 0] <= x + 1.1 * w)
    assert inside.all(), "landmarks must lie inside the face box"


def test_large_image_is_searched_downscaled_and_mapped_back(photo, detector):
    big = np.full((2400, 3200, 3), 90, np.uint8)
    face_img = cv2.resize(photo, (960, 960), interpolation=cv2.INTER_CUBIC)  # 3x
    x0, y0 = 1700, 900
    big[y0 : y0 + 960, x0 : x0 + 960] = face_img
    faces = detector.detect(big)
    assert len(faces) == 1
    expected = REFERENCE_POINTS * 3 + [x0, y0]
    assert _errors(faces[0], expected, IOD * 3).max() < 0.10


def test_several_faces_of_different_sizes_largest_first(photo, detector):
    canvas = np.full((600, 900, 3), 128, np.uint8)
    canvas[20:340, 20:340] = photo
    small = cv2.resize(photo, (192, 192), interpolation=cv2.INTER_AREA)  # face about 33x42 px
    canvas[300:492, 600:792] = small
    faces = get_detector("detect", min_face=24).detect(canvas)
    assert len(faces) == 2
    assert faces[0].box[2] * faces[0].box[3] > faces[1].box[2] * faces[1].box[3]
    assert _errors(faces[0], REFERENCE_POINTS + 20, IOD).max() < 0.10
    k = 192 / 320
    assert _errors(faces[1], REFERENCE_POINTS * k + [600, 300], IOD * k).max() < 0.15
    # --min-face drops the small one
    assert len(get_detector("detect", min_face=60).detect(canvas)) == 1


def test_rotated_photo_keeps_image_left_right_order(photo, detector):
    rotated = np.ascontiguousarray(np.rot90(photo, -1))  # 90 degrees clockwise: (x, y) -> (H-1-y, x)
    faces = detector.detect(rotated)
    assert len(faces) == 1
    h = photo.shape[0]
    expected = np.stack([h - 1 - REFERENCE_POINTS[:, 1], REFERENCE_POINTS[:, 0]], axis=1)
    # the same physical points, whatever their new image-left/right order: compare as sets
    d = np.linalg.norm(faces[0].points5[:, None] - expected[None], axis=2).min(axis=1) / IOD
    assert d.max() < 0.15


def test_blank_image_has_no_faces(detector):
    assert detector.detect(np.full((240, 320, 3), 200, np.uint8)) == []


def test_bad_inputs_and_options():
    with pytest.raises(KFaceError, match="auto, detect, annotation"):
        get_detector("landmarks")  # type: ignore[arg-type]
    with pytest.raises(KFaceError):
        get_detector("detect", min_face=0)
    with pytest.raises(KFaceError):
        get_detector("detect", score_threshold=1.5)
    with pytest.raises(InputError):
        get_detector("detect").detect(np.zeros((50, 50), np.uint16))


SIDECAR = """176\t116
150\t98
200\t97
155\t140
196\t141
120\t110
232\t110
110\t40\t130\t150
140\t88\t20\t15
190\t88\t20\t15
165\t105\t25\t30
145\t130\t60\t20
110\t95\t15\t30
225\t95\t15\t30
"""


def test_annotation_and_auto_modes(tmp_path, photo):
    img_path = tmp_path / "C7.jpg"
    cv2.imwrite(str(img_path), np.zeros((240, 320, 3), np.uint8))
    (tmp_path / "C7.txt").write_text(SIDECAR)
    image = read_image(img_path)
    for mode in ("annotation", "annotation", "auto"):  # "annotation": the former name, still accepted
        faces = get_detector(mode).detect(image, path=img_path)  # type: ignore[arg-type]
        assert len(faces) == 1 and faces[0].landmarks == "annotation"
        np.testing.assert_allclose(faces[0].points5, [[150, 98], [200, 97], [176, 116], [155, 140], [196, 141]])
        assert faces[0].box == (110.0, 40.0, 130.0, 150.0)
    other = tmp_path / "photo.jpg"
    cv2.imwrite(str(other), photo)
    with pytest.raises(InputError, match="no K-Face annotation"):
        get_detector("annotation").detect(photo, path=other)
    auto = get_detector("auto").detect(photo, path=other)  # no .txt: the detector runs
    assert len(auto) == 1 and auto[0].landmarks == "mesh"


def test_import_has_no_side_effects():
    code = "import sys, kface_cli.face.detector as d; d.get_detector('auto'); print('mediapipe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.slow
def test_mediapipe_loads_without_drawing_utils_and_stays_whole_for_other_code():
    code = (
        "import sys\n"
        "from kface_cli.face.detector import get_detector\n"
        "from kface_cli.face.imageio import read_image\n"
        "faces = get_detector('detect').detect(read_image(sys.argv[1]))\n"
        "skipped = [m for m in ('matplotlib', 'mediapipe.tasks') if m in sys.modules]\n"
        "import mediapipe as mp\n"  # code that uses mediapipe itself, later in the same process
        "from mediapipe.python.solutions import drawing_utils\n"
        "print(len(faces), skipped, bool(mp.__version__), mp.solutions.drawing_utils is drawing_utils, hasattr(mp.tasks, 'vision'))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(FIXTURE)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "[]", "True", "True", "True"]


def test_a_dark_photo_is_searched_again_contrast_enhanced(photo):
    from kface_cli.face.detector import MediaPipeDetector, is_low_light

    dark = (photo.astype(np.float32) * 0.03).round().astype(np.uint8)  # mean grey level ~3 (K-Face L7)
    assert is_low_light(dark) and not is_low_light(photo)
    assert MediaPipeDetector(low_light=False).detect(dark) == []  # BlazeFace alone misses it
    faces = MediaPipeDetector().detect(dark)
    assert len(faces) == 1 and faces[0].low_light and faces[0].to_dict()["low_light"] is True
    assert _errors(faces[0], REFERENCE_POINTS, IOD).max() < 0.15
    assert not MediaPipeDetector().detect(photo)[0].low_light  # found at once: no second search


def test_detect_mode_falls_back_to_a_sound_annotation_only_when_the_detector_misses(tmp_path, photo):
    blank = tmp_path / "C1.jpg"  # no face for the detector, an annotation beside it
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    (tmp_path / "C1.txt").write_text(SIDECAR)
    faces = get_detector("detect").detect(read_image(blank), path=blank)
    assert len(faces) == 1 and faces[0].landmarks == "annotation-fallback"
    np.testing.assert_allclose(faces[0].points5[0], [150, 98])
    with_face = tmp_path / "C7.jpg"  # the detector finds the face: the annotation is not used
    cv2.imwrite(str(with_face), photo)
    (tmp_path / "C7.txt").write_text(SIDECAR)
    assert get_detector("detect").detect(photo, path=with_face)[0].landmarks == "mesh"
    small = tmp_path / "C2.jpg"  # the annotation's points lie outside this photo: no fallback
    cv2.imwrite(str(small), np.full((90, 120, 3), 128, np.uint8))
    (tmp_path / "C2.txt").write_text(SIDECAR)
    assert get_detector("detect").detect(read_image(small), path=small) == []
    (tmp_path / "C1.txt").write_text("not an annotation\n")  # unreadable: no fallback, no error
    assert get_detector("detect").detect(read_image(blank), path=blank) == []
