"""Atomic writes: the target appears complete or not at all; a failed write keeps the old file."""

from __future__ import annotations

import os

import pytest

from kface_cli.atomic import atomic_open, atomic_path, write_bytes, write_text


def test_write_creates_folders_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_text(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["out.txt"]


def test_nothing_is_visible_until_the_write_completes(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_open(target) as f:
        f.write("new")
        f.flush()
        assert target.read_text() == "old"  # still the old content mid-write
    assert target.read_text() == "new"


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("saved")
    with pytest.raises(error):
        with atomic_open(target) as f:
            f.write("half")
            raise error()
    assert target.read_text() == "saved"
    assert os.listdir(tmp_path) == ["out.txt"]  # the temporary file is gone too


def test_atomic_path_keeps_the_suffix_and_sets_permissions(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target, mode=0o600) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".onnx" and tmp != target
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert target.stat().st_mode & 0o777 == 0o600
    old_umask = os.umask(0o027)
    try:
        write_text(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o640  # what open() would give, not mkstemp's 0600


def test_a_path_the_library_never_wrote_leaves_the_target_alone(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target) as tmp:
            tmp.unlink()  # e.g. a library that failed before creating its file
    assert target.read_bytes() == b"old"
