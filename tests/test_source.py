"""Reading K-Face sources: layouts, zips vs unpacked trees, unsafe member names, ID lists."""

import zipfile

import pytest
from synth_helpers import make_source

from kface_cli.archive import is_safe_member_name
from kface_cli.dataset.source import list_identities, open_identity, parse_id_list, resolution_dir
from kface_cli.errors import CodeError, InputError


def test_resolution_dir_layouts(tmp_path):
    (tmp_path / "face_recognition" / "Middle_Resolution").mkdir(parents=True)
    (tmp_path / "face_recognition" / "Low_Resolution").mkdir()
    assert resolution_dir(tmp_path, "Middle") == tmp_path / "face_recognition" / "Middle_Resolution"
    assert resolution_dir(tmp_path / "face_recognition", "low") == tmp_path / "face_recognition" / "Low_Resolution"
    assert resolution_dir(tmp_path / "face_recognition" / "Middle_Resolution", "Middle").name == "Middle_Resolution"


def test_resolution_dir_errors_say_what_is_there(tmp_path):
    (tmp_path / "Low_Resolution").mkdir()
    with pytest.raises(InputError, match="no High_Resolution folder.*holds Low_Resolution"):
        resolution_dir(tmp_path, "High")
    with pytest.raises(InputError, match="not found"):
        resolution_dir(tmp_path / "nope", "Low")
    with pytest.raises(InputError, match="not a K-Face resolution"):
        resolution_dir(tmp_path, "Huge")


def test_zip_and_unpacked_identities_read_alike(tmp_path):
    root = make_source(tmp_path / "src", n_ids=2)
    zips = list_identities(root, "Low")
    assert [s.kind for s in zips] == ["zip", "zip"]
    first = zips[0]
    unpacked = root / "Low_Resolution" / first.id
    with zipfile.ZipFile(first.path) as zf:
        zf.extractall(unpacked)
    sources = list_identities(root, "Low")
    assert [s.kind for s in sources] == ["dir", "zip"]  # the unpacked folder wins for that ID
    key = ("S001", "L1", "E01", "C7", ".jpg")
    with open_identity(first) as z, open_identity(sources[0]) as d:
        assert set(z.keys()) == set(d.keys())
        assert z.read(key) == d.read(key)
        assert z.has(("S001", "L1", "E01", "C7", ".txt")) and not z.has(("S002", "L1", "E01", "C7", ".txt"))


def test_unsafe_member_names():
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:/x.jpg", "..\\..\\x.jpg"):
        assert not is_safe_member_name(bad), bad
    for good in ("S001/L1/E01/C7.jpg", "19062531/S001/L1/E01/C7.txt", "a..b/S001/L1/E01/C7.jpg"):
        assert is_safe_member_name(good), good


def test_corrupt_zip_raises_input_error_naming_it(tmp_path):
    d = tmp_path / "Low_Resolution"
    d.mkdir()
    (d / "19062531.zip").write_bytes(b"this is not a zip file at all")
    (src,) = list_identities(tmp_path, "Low")
    with pytest.raises(InputError, match="corrupt or unreadable zip 19062531.zip"):
        with open_identity(src):
            pass


def test_parse_id_list(tmp_path):
    assert parse_id_list(None) is None
    assert parse_id_list("19062531, 19062542 19062531") == ("19062531", "19062542")
    f = tmp_path / "ids.txt"
    f.write_text("# validation people\n19062531\n19062542  # second\n\n")
    assert parse_id_list(str(f)) == ("19062531", "19062542")
    with pytest.raises(CodeError, match="'1906253' is not a K-Face identity ID"):
        parse_id_list("19062531,1906253")
