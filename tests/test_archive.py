"""kface_cli.archive: the zip rules shared by K-Face zips and model packs (all or nothing)."""

from __future__ import annotations

import random
import stat
import zipfile

import pytest

from kface_cli.archive import UnsafeArchiveError, extract_all, is_link, is_safe_member_name, too_big
from kface_cli.errors import InputError

LIMITS = {"max_member_bytes": 4 * 1024 * 1024, "max_total_bytes": 6 * 1024 * 1024}


def _zip(path, members, link=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, link[1])
    return path


def test_safe_archive_unpacks_everything(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"x/a.onnx": b"a" * 10, "b.txt": b"b"})
    assert sorted(extract_all(archive, tmp_path / "out", **LIMITS)) == ["b.txt", "x/a.onnx"]
    assert (tmp_path / "out" / "x" / "a.onnx").read_bytes() == b"a" * 10


@pytest.mark.parametrize(
    "members, link, match",
    [
        ({"ok.txt": b"1", "../up.txt": b"2"}, None, "outside its folder"),
        ({"ok.txt": b"1", "/etc/abs.txt": b"2"}, None, "outside its folder"),
        ({"ok.txt": b"1", "C:/win.txt": b"2"}, None, "outside its folder"),
        ({"ok.txt": b"1"}, ("evil", "/etc/passwd"), "symbolic link"),
        ({"bomb.bin": bytes(3 * 1024 * 1024)}, None, "compressed"),  # zeros: ~3 KB compressed
        ({"big.bin": bytes(range(256)) * (5 * 4096)}, None, "larger than"),
    ],
)
def test_refused_archives_leave_nothing(tmp_path, members, link, match):
    archive = _zip(tmp_path / "bad.zip", members, link)
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_all(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_total_size_limit_and_damaged_zips(tmp_path):
    blob = random.Random(0).randbytes(3 * 1024 * 1024)  # 3 MiB that do not compress: each under the member limit
    archive = _zip(tmp_path / "many.zip", {"a": blob, "b": blob, "c": blob})
    with pytest.raises(UnsafeArchiveError, match="unpacks to 9 MiB"):
        extract_all(archive, tmp_path / "out", **LIMITS)
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="not a readable zip"):
        extract_all(tmp_path / "junk.zip", tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()


def test_member_rules():
    assert not is_safe_member_name("a/../../b") and not is_safe_member_name("\\\\server\\x")
    assert is_safe_member_name("a/b..c/d.onnx")
    assert too_big(10, 10, 100) is None and "limit" in too_big(200, 200, 100)
    info = zipfile.ZipInfo("l")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert is_link(info) and not is_link(zipfile.ZipInfo("f"))
