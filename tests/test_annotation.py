"""The K-Face annotation parser: separators, 5/6/7 boxes, bad lines, ArcFace point order, writer."""

import numpy as np
import pytest

from kface_cli.dataset.annotation import format_annotation, parse_annotation, read_annotation
from kface_cli.errors import InputError

# The dataset reference's example (camera C1, a profile, 5 boxes).
PROFILE = """176\t116
186\t97
190\t96
189\t137
191\t139
246\t110
250\t110
156\t51\t111\t111
183\t88\t18\t13
172\t97\t18\t29
179\t130\t16\t16
233\t88\t35\t45
"""

POINTS = [(170, 120), (150, 100), (190, 101), (155, 140), (186, 141), (120, 110), (222, 111)]
BOXES7 = [
    (115, 60, 115, 115),
    (140, 94, 20, 12),
    (180, 95, 20, 12),
    (160, 100, 20, 28),
    (150, 132, 42, 16),
    (112, 95, 14, 30),
    (220, 96, 14, 30),
]


def _text(points, boxes, sep="\t"):
    return "\n".join(sep.join(str(v) for v in row) for row in [*points, *boxes]) + "\n"


def test_profile_example_from_the_reference():
    a = parse_annotation(PROFILE)
    assert a.points.shape == (7, 2)
    assert a.face_box == (156, 51, 111, 111)
    # lone eye and ear are right of the nose tip (x=176): image-right parts
    assert set(a.boxes) == {"face", "eye_right", "nose", "mouth", "ear_right"}
    assert a.boxes["nose"] == (172, 97, 18, 29)


def test_points5_are_kface_points_1_2_0_3_4():
    a = parse_annotation(PROFILE)
    np.testing.assert_array_equal(
        a.points5, np.array([[186, 97], [190, 96], [176, 116], [189, 137], [191, 139]], dtype=np.float32)
    )


@pytest.mark.parametrize("sep", ["\t", " ", ",", ";", " , ", "  \t", ", "])
def test_separators(sep):
    a = parse_annotation(_text(POINTS, BOXES7, sep))
    assert a.face_box == BOXES7[0]
    np.testing.assert_array_equal(a.points, np.array(POINTS, dtype=float))


def test_blank_lines_crlf_and_bom_are_tolerated():
    text = "\ufeff" + _text(POINTS, BOXES7).replace("\n", "\r\n") + "\r\n\r\n"
    assert parse_annotation(text).face_box == BOXES7[0]


def test_seven_and_six_boxes():
    a7 = parse_annotation(_text(POINTS, BOXES7))
    assert list(a7.boxes) == ["face", "eye_left", "eye_right", "nose", "mouth", "ear_left", "ear_right"]
    six_right = parse_annotation(_text(POINTS, BOXES7[:5] + [BOXES7[6]]))
    assert "ear_right" in six_right.boxes and "ear_left" not in six_right.boxes
    six_left = parse_annotation(_text(POINTS, BOXES7[:5] + [BOXES7[5]]))
    assert six_left.boxes["ear_left"] == BOXES7[5] and "ear_right" not in six_left.boxes


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda p, b: (p, b[:4]), "expected 7 points and 5-7 boxes"),  # too few lines
        (lambda p, b: (p, b + [b[0]]), "at most 14"),
        (lambda p, b: ([p[0] + (5,)] + p[1:], b), "line 1 should be a point"),
        (lambda p, b: (p, [b[0][:3]] + b[1:]), "line 8 should be a box"),
        (lambda p, b: (p, [(1, 2, -3, 4)] + b[1:]), "negative size"),
    ],
)
def test_malformed_annotations_raise_input_error(mutate, fragment):
    p, b = mutate(list(POINTS), list(BOXES7))
    with pytest.raises(InputError) as e:
        parse_annotation(_text(p, b), source="C7.txt")
    assert fragment in str(e.value) and "C7.txt" in str(e.value)


def test_non_numbers_name_the_line():
    text = _text(POINTS, BOXES7).replace("150\t100", "150\tabc")
    with pytest.raises(InputError, match="line 2 is not numbers"):
        parse_annotation(text)


def test_problems_for_boxes_outside_or_empty():
    a = parse_annotation(_text(POINTS, BOXES7))
    assert a.problems(346, 230) == []
    assert any("outside" in p for p in a.problems(200, 150))
    zero = parse_annotation(_text(POINTS, [(115, 60, 0, 115)] + BOXES7[1:]))
    assert any("zero size" in p for p in zero.problems(346, 230))


def test_writer_round_trip(tmp_path):
    boxes = {
        "face": BOXES7[0],
        "eye_left": BOXES7[1],
        "eye_right": BOXES7[2],
        "nose": BOXES7[3],
        "mouth": BOXES7[4],
        "ear_right": BOXES7[6],
    }
    text = format_annotation(np.array(POINTS, dtype=float) + 0.3, boxes)
    assert len(text.strip().splitlines()) == 13
    path = tmp_path / "C8.txt"
    path.write_text(text)
    a = read_annotation(path)
    assert a.boxes == boxes
    np.testing.assert_array_equal(a.points, np.array(POINTS, dtype=float))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="annotation not found"):
        read_annotation(tmp_path / "nope.txt")
