"""K-Face code tables, list/range parsing, helpful errors and face file names."""

import pytest

from kface_cli.dataset import codes as kc
from kface_cli.errors import CodeError


def test_tables_have_every_code():
    assert list(kc.ACCESSORIES) == [f"S00{i}" for i in range(1, 7)]
    assert list(kc.LIGHTS) == [f"L{i}" for i in range(1, 31)]
    assert list(kc.EXPRESSIONS) == ["E01", "E02", "E03"]
    assert list(kc.CAMERAS) == [f"C{i}" for i in range(1, 21)]


def test_table_values_follow_the_dataset_reference():
    assert (kc.LIGHTS["L1"].lux, kc.LIGHTS["L1"].axis) == (1000, "all")
    assert kc.LIGHTS["L7"].lux == 0 and "dark" in kc.LIGHTS["L7"].description
    assert (kc.LIGHTS["L8"].lux, kc.LIGHTS["L8"].axis, kc.LIGHTS["L8"].angle) == (400, "vertical", 30)
    assert (kc.LIGHTS["L15"].lux, kc.LIGHTS["L15"].angle) == (40, -15)
    assert (kc.LIGHTS["L16"].axis, kc.LIGHTS["L16"].angle, kc.LIGHTS["L16"].lux) == ("horizontal", 90, 400)
    assert (kc.LIGHTS["L30"].angle, kc.LIGHTS["L30"].lux) == (-90, 100)
    assert (kc.CAMERAS["C1"].pitch, kc.CAMERAS["C1"].yaw) == (0, 90)
    assert (kc.CAMERAS["C7"].pitch, kc.CAMERAS["C7"].yaw) == (0, 0)
    assert (kc.CAMERAS["C16"].pitch, kc.CAMERAS["C16"].yaw) == (30, 0)
    assert (kc.CAMERAS["C20"].pitch, kc.CAMERAS["C20"].yaw) == (-15, -30)
    assert kc.ACCESSORIES["S004"].description == "sunglasses"
    assert kc.describe("expr", "E02") == "broad smile"


@pytest.mark.parametrize(
    "kind,text,expected",
    [
        ("light", "L1,L3", ("L1", "L3")),
        ("light", "l3, l1", ("L1", "L3")),
        ("cam", "C6-C9", ("C6", "C7", "C8", "C9")),
        ("cam", "C6-9", ("C6", "C7", "C8", "C9")),
        ("cam", "C13,C1,C6-C7", ("C1", "C6", "C7", "C13")),
        ("expr", "E01-E03", ("E01", "E02", "E03")),
        ("expr", "E1", ("E01",)),
        ("acc", "S1-S2", ("S001", "S002")),
        ("light", "L6;L7", ("L6", "L7")),
    ],
)
def test_parse_selection(kind, text, expected):
    assert kc.parse_selection(kind, text) == expected


def test_all_and_default():
    assert len(kc.parse_selection("light", "all")) == 30
    assert kc.parse_selection("cam", None) == ("C6", "C7", "C8", "C9")
    assert kc.parse_selection("light", "") == ("L1", "L3")


@pytest.mark.parametrize(
    "kind,text,message",
    [
        ("light", "L31", "L31 is not a K-Face light (L1-L30)"),
        ("cam", "C21", "C21 is not a K-Face camera (C1-C20)"),
        ("expr", "E04", "E04 is not a K-Face expression (E01-E03)"),
        ("acc", "S007", "S007 is not a K-Face accessory (S001-S006)"),
        ("cam", "C6-C99", "C99 is not a K-Face camera (C1-C20)"),
        ("light", "X1", "not a K-Face light code"),
        ("cam", "C9-C6", "backwards"),
        ("light", "L1-", "not a valid light range"),
    ],
)
def test_bad_codes_say_what_is_valid(kind, text, message):
    with pytest.raises(CodeError) as e:
        kc.parse_selection(kind, text)
    assert message in str(e.value)


def test_face_filename_round_trip():
    codes = {"id": "19062531", "acc": "S001", "light": "L1", "expr": "E01", "cam": "C7"}
    name = kc.face_filename(codes)
    assert name == "19062531_S001_L1_E01_C7.jpg"
    assert kc.parse_face_filename(name) == codes
    assert kc.parse_face_filename("some/dir/19062531_S002_L30_E03_C20.png")["light"] == "L30"


@pytest.mark.parametrize(
    "name", ["1906253_S001_L1_E01_C7.jpg", "19062531_S001_L1_E01.jpg", "photo.jpg", "19062531_S001_L31_E01_C7.jpg"]
)
def test_bad_face_filenames(name):
    with pytest.raises(CodeError):
        kc.parse_face_filename(name)


def test_member_paths_and_box_counts():
    assert kc.member_path("S001", "L1", "E01", "C7", ".txt") == "S001/L1/E01/C7.txt"
    assert kc.parse_member_path("19062531/S001/L3/E02/C8.jpg") == {
        "acc": "S001",
        "light": "L3",
        "expr": "E02",
        "cam": "C8",
    }
    assert kc.parse_member_path("S001/L1/E01/readme.jpg") is None
    assert kc.parse_member_path("C7.jpg") is None
    assert [kc.boxes_for_camera(c) for c in ("C7", "C16", "C1", "C2", "C12", "C13", "C6", "C14", "C20")] == [
        7,
        7,
        5,
        5,
        5,
        5,
        6,
        6,
        6,
    ]
    assert kc.is_identity_id("19062531") and not kc.is_identity_id("1906253") and not kc.is_identity_id("1906253a")
