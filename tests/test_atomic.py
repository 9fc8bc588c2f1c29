"""Atomic writes: the target appears complete or not at all; a failed write keeps the old file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kface_cli.atomic import atomic_open, atomic_path, write_bytes, write_text
from kface_cli.errors import KFaceError


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


# -- issue 25: no output ever overwrites an input, a gallery or a model ----------------------------


def _gallery(path):
    import numpy as np

    from kface_cli.gallery.schema import ModelInfo, Template, content_hash
    from kface_cli.gallery.store import Gallery

    e = np.ones(16, np.float32) / 4
    Gallery(path).append([Template("ann", e, "a.jpg", content_hash(b"a"))], ModelInfo("f" * 20, 16, "mbf", "/r"))
    return path


def test_check_output_refuses_inputs_by_path_and_identity(tmp_path):
    from kface_cli.atomic import check_output, same_file
    from kface_cli.errors import InputError

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"jpeg")
    os.link(photo, tmp_path / "hard.csv")
    (tmp_path / "soft.csv").symlink_to(photo)
    assert same_file(tmp_path / "hard.csv", photo) and same_file(tmp_path / "soft.csv", photo)
    assert same_file(tmp_path / "sub" / ".." / "a.jpg", photo)
    for out in (photo, tmp_path / "hard.csv", tmp_path / "soft.csv", tmp_path / "." / "a.jpg"):
        with pytest.raises(InputError, match="also an input of this command") as err:
            check_output(out, inputs=[photo], option="--csv")
        assert "--csv" in str(err.value)
    with pytest.raises(InputError, match="is a photo in the input folder"):
        check_output(photo, inputs=[tmp_path])
    assert check_output(tmp_path / "new.csv", inputs=[photo, tmp_path, None]) == tmp_path / "new.csv"


def test_check_output_refuses_galleries_and_models_even_if_not_inputs(tmp_path):
    import torch

    from kface_cli.atomic import ONNX_KIND, check_output, protected_kind
    from kface_cli.errors import InputError

    g = _gallery(tmp_path / "people.dat")  # judged by content, not by name
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.bin")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.zip"))
    files = [tmp_path / n for n in ("people.dat", "weights.bin", "model.onnx", "ts.zip")]
    kinds = {p.name: protected_kind(p) for p in files}
    assert kinds == {
        "people.dat": "kface gallery or an HDF5 file kface did not write", "weights.bin": "model", "model.onnx": "ONNX model", "ts.zip": "TorchScript model",
    }  # fmt: skip
    for path in files:
        with pytest.raises(InputError, match=f"is a {re.escape(kinds[path.name])}; refusing to overwrite it"):
            check_output(path)
    assert check_output(tmp_path / "model.onnx", may_replace={ONNX_KIND})  # export over an earlier export
    import numpy as np

    from kface_cli.deploy.compare import load_embeddings, save_embeddings

    save_embeddings(tmp_path / "emb.h5", ["a"], np.ones((1, 4), np.float32))
    assert check_output(tmp_path / "emb.h5") and g.exists()  # `kface embed` may write its own file again
    assert load_embeddings(tmp_path / "emb.h5")[0] == ["a"]  # the user block changes nothing for readers


def test_check_output_folder_refuses_the_input_folder(tmp_path):
    from kface_cli.atomic import check_output_folder
    from kface_cli.errors import InputError

    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="--annotate .* holds the input photos"):
        check_output_folder(tmp_path, inputs=[tmp_path / "a.jpg"], option="--annotate")
    with pytest.raises(InputError, match="holds the input photos"):
        check_output_folder(tmp_path / ".", inputs=[tmp_path], option="--annotate")
    assert check_output_folder(tmp_path / "out", inputs=[tmp_path / "a.jpg"], option="--annotate")


def test_a_place_that_takes_no_files_is_one_line(tmp_path):
    """A target under a regular file, or in a folder where no file can be created (/proc), is a
    KFaceError naming the target, not a traceback; nothing is written."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    with pytest.raises(KFaceError, match=r"cannot write .*notes\.txt/out\.npy: .*notes\.txt is a file, not a folder"):
        with atomic_path(blocker / "out.npy"):
            pass
    assert blocker.read_text() == "keep"
    if Path("/proc/self").is_dir():  # Linux: /proc exists, and refuses new files
        with pytest.raises(KFaceError, match=r"cannot write /proc/out\.npy"):
            with atomic_path("/proc/out.npy"):
                pass
