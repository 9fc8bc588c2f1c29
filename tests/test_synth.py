"""The synthetic K-Face generator: layout, sizes, annotations, geometry, determinism."""

import io
import zipfile
from datetime import datetime

import numpy as np
import pytest

from kface_cli.dataset.annotation import parse_annotation
from kface_cli.errors import InputError
from kface_cli.face.align import is_degenerate
from kface_cli.synth import generator as synth
from kface_cli.synth import identity, sample_data


@pytest.fixture(scope="module")
def ident():
    return identity.make_identity(identity.identity_ids(1, seed=5)[0], seed=5)


def test_identity_ids_look_like_kface():
    ids = identity.identity_ids(25, seed=1)
    assert len(ids) == len(set(ids)) == 25 and ids == sorted(ids)
    for i in ids:
        assert len(i) == 8 and i.isdigit()
        datetime.strptime(i[:6], "%y%m%d")  # a real date
        assert i[6] in "1234" and i[7] != "0"
    assert identity.identity_ids(25, seed=1) == ids
    assert identity.identity_ids(25, seed=2) != ids


def test_identities_are_deterministic_and_distinct():
    a, b = identity.make_identity("19062531", 0), identity.make_identity("19062542", 0)
    assert identity.make_identity("19062531", 0) == a
    assert a != b and identity.make_identity("19062531", 1) != a


@pytest.mark.parametrize(("res", "shape"), [("Low", (115, 173, 3)), ("Middle", (230, 346, 3)), ("High", (576, 864, 3))])
def test_image_sizes_are_kfaces(ident, res, shape):
    """The sizes of the real dataset's images (K-Face's documentation), not the generator's own table."""
    face = synth.render_face(ident, "S001", "L1", "E01", "C8", res)
    assert face.image.shape == shape and face.image.dtype == np.uint8


def test_box_counts_follow_the_camera(ident):
    expected = {"C7": 7, "C16": 7, "C6": 6, "C9": 6, "C14": 6, "C1": 5, "C13": 5}
    for cam, n in expected.items():
        face = synth.render_face(ident, "S001", "L1", "E01", cam, "Low")
        assert len(face.boxes) == n, cam
    # a turned head hides the far side's ear (and, in profile, eye)
    c1 = synth.render_face(ident, "S001", "L1", "E01", "C1", "Low").boxes
    assert set(c1) == {"face", "eye_right", "nose", "mouth", "ear_right"}
    c13 = synth.render_face(ident, "S001", "L1", "E01", "C13", "Low").boxes
    assert set(c13) == {"face", "eye_left", "nose", "mouth", "ear_left"}


def test_landmarks_move_consistently_with_the_camera(ident):
    def pts(cam):
        return synth.render_face(ident, "S001", "L1", "E01", cam, "Middle").points

    front = pts("C7")
    assert front[1, 0] < front[0, 0] < front[2, 0]  # eye left < nose < eye right
    assert front[3, 1] > front[0, 1] > front[1, 1]  # eyes above nose above mouth
    assert not is_degenerate(front[[1, 2, 0, 3, 4]])
    # yaw +30 (C5): the nose swings to the image's left of the eye midpoint; yaw -30 (C9): right
    for cam, sign in (("C5", -1), ("C9", 1)):
        p = pts(cam)
        assert np.sign(p[0, 0] - (p[1, 0] + p[2, 0]) / 2) == sign, cam
    for cam in ("C1", "C13"):  # profiles: both eyes at nearly one point
        p = pts(cam)
        assert np.linalg.norm(p[1] - p[2]) < 0.25 * np.linalg.norm(front[1] - front[2])
        assert is_degenerate(p[[1, 2, 0, 3, 4]]), cam


def test_points_lie_in_the_face_box(ident):
    for cam in ("C6", "C7", "C8", "C9", "C16"):
        face = synth.render_face(ident, "S001", "L3", "E02", cam, "Middle")
        x, y, w, h = face.boxes["face"]
        p5 = face.points[:5]
        assert ((p5[:, 0] > x) & (p5[:, 0] < x + w) & (p5[:, 1] > y) & (p5[:, 1] < y + h)).all(), cam


def test_expression_moves_the_mouth_corners(ident):
    def corners(expr):
        p = synth.render_face(ident, "S001", "L1", expr, "C7", "Middle").points
        return np.linalg.norm(p[3] - p[4]), (p[3, 1] + p[4, 1]) / 2 - p[0, 1]

    (w1, d1), (w2, d2), (_w3, d3) = corners("E01"), corners("E02"), corners("E03")
    assert w2 > w1 * 1.1  # a broad smile is wider
    assert d2 < d1 < d3  # corners up when smiling, down when frowning


def test_light_l7_is_dark(ident):
    mean = {lt: synth.render_face(ident, "S001", lt, "E01", "C7", "Low").image.mean() for lt in ("L1", "L3", "L7")}
    assert mean["L7"] < 0.2 * mean["L1"] and mean["L3"] < mean["L1"]


def test_zip_layout_annotations_and_determinism(ident):
    combos = [
        ("S001", "L1", "E01", "C7"),
        ("S001", "L6", "E03", "C1"),
        ("S002", "L1", "E01", "C7"),
        ("S001", "L2", "E01", "C7"),
    ]
    data, n = sample_data.identity_zip_bytes(ident, "Low", combos, seed=5)
    assert n == 4
    assert sample_data.identity_zip_bytes(ident, "Low", combos, seed=5)[0] == data  # byte-identical
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        # annotations only for S001 with L1, L3, L6, L7
        assert names == {
            "S001/L1/E01/C7.jpg",
            "S001/L1/E01/C7.txt",
            "S001/L6/E03/C1.jpg",
            "S001/L6/E03/C1.txt",
            "S002/L1/E01/C7.jpg",
            "S001/L2/E01/C7.jpg",
        }
        ann = parse_annotation(zf.read("S001/L6/E03/C1.txt").decode())
        assert len(ann.boxes) == 5
        assert len(zf.read("S001/L1/E01/C7.txt").decode().strip().splitlines()) == 14


def test_generate_sample_data(tmp_path):
    combos = [("S001", "L1", "E01", "C7"), ("S001", "L3", "E02", "C8")]
    result = sample_data.generate_sample_data(
        tmp_path, n_ids=3, seed=2, resolutions=("Low", "Middle"), combos=combos, ids_per_resolution={"Middle": 1}
    )
    assert result.identities == 3 and result.images == 4 * 2
    assert sorted(p.name for p in (tmp_path / "Low_Resolution").iterdir()) == [
        f"{i}.zip" for i in identity.identity_ids(3, 2)
    ]
    assert len(list((tmp_path / "Middle_Resolution").iterdir())) == 1


def test_grids_and_resolution_limits():
    assert len(sample_data.grid("tutorial")) == 24
    sample = sample_data.grid("sample")
    assert len(sample) == 30 and set(sample_data.grid("tutorial")) < set(sample)  # the tutorial's 24 plus 6
    assert len(sample_data.grid("full")) == 6 * 30 * 3 * 20
    with pytest.raises(InputError, match="unknown grid"):
        sample_data.grid("huge")
    assert sample_data.parse_resolution_limits("Middle,low:8,High:2") == (
        ("Middle", "Low", "High"),
        {"Low": 8, "High": 2},
    )
    with pytest.raises(InputError):
        sample_data.parse_resolution_limits("Middle:x")
    with pytest.raises(InputError):
        sample_data.parse_resolution_limits("Huge")
