"""The hostile-input and fault matrix (issue 9): every defect found, kept as a case so none comes back.

Each case is what a new user or an attacker does: a file that lies about itself, a zip bomb, a
read-only deployment, a full disk. The promise is always the same: no code runs, no silent wrong
answer, one clear line (a :class:`~kface_cli.errors.KFaceError`) instead of a traceback, and
nothing already saved is lost.

Read-only folders and full disks are simulated (tests run as root in CI containers, where
permissions do not stop a write, and cannot mount a tiny filesystem): the write system calls
raise the ``OSError`` the kernel would (``EROFS``, ``ENOSPC``), at the same places.
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers.synth import make_source

from kface_cli.dataset import source as source_mod
from kface_cli.dataset.annotation import parse_annotation
from kface_cli.dataset.source import MAX_MEMBER_BYTES, list_identities, open_identity
from kface_cli.errors import DiskFullError, InputError, KFaceError, ReadOnlyError
from kface_cli.face.imageio import decode_image
from kface_cli.gallery import index as index_module
from kface_cli.gallery import lock, schema, store
from kface_cli.gallery.index import index_paths, load_index
from kface_cli.gallery.manage import manage_gallery
from kface_cli.gallery.schema import ModelInfo, Template, content_hash
from kface_cli.gallery.store import Gallery
from kface_cli.prepare.extract import extract

REPO = Path(__file__).resolve().parents[1]
MODEL = ModelInfo("f" * 20, 16, "mbf", "/runs/a")
WANTED = "S001/L1/E01/C7.jpg"  # in the tutorial selection and in every synthetic identity


@dataclass
class Ctx:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    capfd: pytest.CaptureFixture


# -- helpers -------------------------------------------------------------------------------------


def _templates(names, start=0):
    rng = np.random.default_rng(start)
    out = []
    for i, name in enumerate(names, start):
        e = rng.standard_normal(16).astype(np.float32)
        out.append(Template(name, e / np.linalg.norm(e), f"/p/{name}/{i}.jpg", content_hash(f"{name}{i}".encode())))
    return out


def _gallery(folder: Path) -> Gallery:
    g = Gallery(folder / "gallery.h5")
    g.append(_templates(["ALICE", "BOB"]), MODEL)
    return g


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _inside(path, folder: Path) -> bool:
    try:
        return Path(os.fspath(path)).resolve().is_relative_to(folder.resolve())
    except TypeError:  # a file descriptor
        return False


def _read_only(ctx: Ctx, folder: Path) -> None:
    """Make ``folder`` behave as on a read-only filesystem: every create (file or folder) or write there fails with EROFS."""
    import h5py

    real_open, real_file = os.open, h5py.File
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(path, flags, *args, **kwargs):
        if flags & writes and _inside(path, folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_file(path, mode="r", *args, **kwargs):
        if mode != "r" and _inside(path, folder):
            raise OSError(errno.EROFS, f"Unable to synchronously open file (errno = {errno.EROFS})")
        return real_file(path, mode, *args, **kwargs)

    real_mkdir = os.mkdir

    def guarded_mkdir(path, *args, **kwargs):
        if _inside(path, folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    ctx.monkeypatch.setattr(os, "open", guarded_open)
    ctx.monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    ctx.monkeypatch.setattr(h5py, "File", guarded_file)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _zip_with(path: Path, members: dict[str, bytes], base: Path | None = None) -> Path:
    """A zip at ``path``: the members of ``base`` (another identity zip) plus or replaced by ``members``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        if base is not None:
            with zipfile.ZipFile(base) as src:
                for name in src.namelist():
                    if name not in members:
                        dst.writestr(name, src.read(name))
        for name, data in members.items():
            dst.writestr(name, data)
    return path


def _one_source(ctx: Ctx) -> tuple[Path, Path]:
    """(a K-Face root holding one good identity zip, that zip)."""
    root = make_source(ctx.tmp / "kface", n_ids=1)
    (z,) = (root / "Low_Resolution").glob("*.zip")
    return root, z


# -- defect 1: model files never run code ---------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def case_pickle_that_runs_code(ctx: Ctx) -> None:
    import torch

    from kface_cli.embedding.loading import load_torch_weights

    marker = ctx.tmp / "pwned"
    torch.save({"w": _RunsCode(marker)}, ctx.tmp / "backbone.pth")
    (ctx.tmp / "config.json").write_text('{"network": "mbf"}')  # beside a config: once loaded unsafely
    with pytest.raises(InputError, match="refused to load"):
        load_torch_weights(ctx.tmp / "backbone.pth")
    assert not marker.exists()


# -- issue 25: no model runs code unasked, fingerprints of weights, no command loses a gallery -----


def case_torchscript_needs_trust_model(ctx: Ctx) -> None:
    import torch

    from kface_cli.embedding.loading import load_embedder

    class Program(torch.nn.Module):  # TorchScript is a program: torch.from_file can map any file read-write
        def __init__(self, target: str):
            super().__init__()
            self.target = target

        def forward(self, x):
            return x.flatten(1)[:, :8] + torch.from_file(self.target, shared=True, size=1, dtype=torch.uint8)

    path = ctx.tmp / "model.pt"
    torch.jit.save(torch.jit.script(Program(str(ctx.tmp / "victim"))), str(path))
    loads = []
    ctx.monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(InputError, match="--trust-model"):
        load_embedder(path)
    assert not loads  # refused before torch.jit.load could run anything


def _constant_onnx(path: Path, value: float) -> Path:
    """An ONNX "face model" whose every embedding is ``value`` (0: all equal, NaN: all broken)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Constant", [], ["z"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Constant", [], ["v"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [value])),
        helper.make_node("Mul", ["m", "z"], ["mz"]),
        helper.make_node("Add", ["mz", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def case_zero_or_nan_model_says_nothing(ctx: Ctx) -> None:
    from kface_cli import api
    from kface_cli.face.imageio import write_image

    a, b = ctx.tmp / "a.png", ctx.tmp / "b.png"
    write_image(a, np.full((112, 112, 3), 40, np.uint8))
    write_image(b, np.full((112, 112, 3), 200, np.uint8))
    for value in (0.0, float("nan")):
        model = _constant_onnx(ctx.tmp / "m.onnx", value)
        with pytest.raises(InputError, match="nothing was compared or stored"):
            api.verify(str(model), a, b, aligned=True)  # a path works as the model
        g = api.Gallery(ctx.tmp / f"g{value}.h5", str(model))
        (ctx.tmp / "people").mkdir(exist_ok=True)
        write_image(ctx.tmp / "people" / "ann.png", np.full((112, 112, 3), 90, np.uint8))
        with pytest.raises(InputError, match="embeddings"):
            g.enroll(ctx.tmp / "people", aligned=True)
        assert not g.path.exists() or not Gallery(g.path).identities()  # no NaN template committed


def case_replace_with_no_face_keeps_the_person(ctx: Ctx) -> None:
    from helpers.embedders import FakeEmbedder

    from kface_cli.deploy.enroll import enroll_folder

    class NoFace:
        def detect(self, image, path=None):
            return []

    g = Gallery(ctx.tmp / "gallery.h5")
    emb = FakeEmbedder("pixels", embedding_size=16)
    g.append(_templates(["ALICE"]), ModelInfo.of(emb))
    (ctx.tmp / "new" / "ALICE").mkdir(parents=True)
    (ctx.tmp / "new" / "ALICE" / "wall.png").write_bytes(_png(200, 150))
    with pytest.raises(InputError, match="gallery is unchanged"):
        enroll_folder(ctx.tmp / "new", g.path, emb, replace=True, detector=NoFace())
    assert g.identities() == {"ALICE": 1}


def case_outputs_never_overwrite_the_gallery(ctx: Ctx) -> None:
    from typer.testing import CliRunner

    from kface_cli.cli import app

    g = _gallery(ctx.tmp)
    before = g.path.read_bytes()
    os.link(g.path, ctx.tmp / "hard.csv")
    photo = str(ctx.tmp / "p.jpg")
    for args in (
        ["identify", photo, "--gallery", str(g.path), "--csv", str(g.path)],
        ["identify", photo, "--gallery", str(g.path), "--csv", str(ctx.tmp / "hard.csv")],
        ["identify", photo, "--gallery", str(ctx.tmp / "other.h5"), "--csv", str(g.path)],
        ["embed", photo, "--out", str(g.path)],
    ):
        (ctx.tmp / "p.jpg").write_bytes(_png())
        result = CliRunner().invoke(app, [*args, "--workdir", str(ctx.tmp)])
        assert result.exit_code == 2 and "refusing to overwrite" in result.output, result.output
    assert g.path.read_bytes() == before


def case_calibration_threshold_of_1e9(ctx: Ctx) -> None:
    import json

    from kface_cli.embedding.calibration import calibration_path, load_threshold

    class Model:
        source, fingerprint = ctx.tmp / "m.onnx", "abc"

    calibration_path(Model.source).write_text(json.dumps({"version": 2, "entries": {"abc": {"threshold": 1e9}}}))
    with pytest.raises(InputError, match="outside the squared-L2 range"):
        load_threshold(Model())


# -- defect 2: silent corruption ------------------------------------------------------------------


def case_gallery_name_changed_in_place(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    data = g.path.read_bytes()
    at = data.index(b"ALICE/p/ALICE")
    with open(g.path, "r+b") as f:
        f.seek(at)
        f.write(b"MALLO")
    with pytest.raises(InputError, match="integrity check: names changed"):
        load_index(g)


def case_gallery_pointing_at_other_files(ctx: Ctx) -> None:
    import h5py

    g = _gallery(ctx.tmp)
    secret = ctx.tmp / "secret"
    secret.write_bytes(b"root:x:0:0:" * 100)
    with h5py.File(g.path, "r+") as f:  # the names' bytes now live in another file
        old = f["text"]
        shape, dtype = old.shape, old.dtype
        del f["text"]
        f.create_dataset("text", shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        # (the digest is unkeyed: whoever edits the file can recompute it; the link is refused anyway)
    with pytest.raises(InputError, match=r"refers to data outside itself \(text\)"):
        g.read(embeddings=False)


def case_gallery_claiming_more_rows_than_it_stores(ctx: Ctx) -> None:
    import h5py

    g = _gallery(ctx.tmp)
    claimed = 50_000_000  # 100 GB of float32 embeddings, in a file of a few MB
    with h5py.File(g.path, "r+") as f:
        for k in schema._ROW_FIELDS:
            old = f[k]
            shape, dtype = (claimed, *old.shape[1:]), old.dtype
            del f[k]
            f.create_dataset(k, shape=shape, dtype=dtype, chunks=(65536, *shape[1:]), compression="gzip")
        parts = f.attrs["digest"].decode().split(":")
        parts[1] = f"{claimed:012d}"
        f.attrs["digest"] = np.bytes_(":".join(parts).encode())
    assert g.path.stat().st_size < 20 * 2**20
    with pytest.raises(InputError, match="claims 50,000,000 rows but stores fewer"):
        g.read(embeddings=False)


# -- defect 3: images that claim huge sizes -------------------------------------------------------


def case_jpeg_header_claims_65000_pixels_square(ctx: Ctx) -> None:
    sof = b"\xff\xc0\x00\x11\x08" + (65000).to_bytes(2, "big") * 2 + b"\x03" + b"\x01\x22\x00" * 3
    with pytest.raises(InputError, match="image too large"):
        decode_image(b"\xff\xd8" + sof + b"\xff\xd9", "bomb.jpg")


# -- defect 4: zip bombs --------------------------------------------------------------------------


def case_zip_bomb_member_is_skipped_by_name(ctx: Ctx) -> None:
    root, good = _one_source(ctx)
    bomb = bytes(MAX_MEMBER_BYTES + 1)  # zeros: a few KB compressed
    _zip_with(good, {WANTED: bomb, "S001/L3/E02/C8.jpg": bytes(2 * 2**20)}, base=_zip_with(ctx.tmp / "b.zip", {}, good))
    assert good.stat().st_size < 200_000
    tracemalloc.start()
    try:
        r = extract(root, workdir=ctx.tmp / "ws", res="Low", workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"extract held {peak / 2**20:.0f} MiB"
    assert sorted(m["member"] for m in r.oversized_members) == ["S001/L1/E01/C7.jpg", "S001/L3/E02/C8.jpg"]
    assert "compressed" in " ".join(m["why"] for m in r.oversized_members)  # the 2 MiB one: by its ratio
    err = ctx.capfd.readouterr().err
    assert f"{good.name}: skipped {WANTED}" in err
    assert not list((ctx.tmp / "ws").rglob("C7.jpg")) and not list((ctx.tmp / "ws").rglob("C8.jpg"))
    assert r.ok and r.images > 0  # the identity's other images were extracted


def case_large_member_is_streamed(ctx: Ctx) -> None:
    root, good = _one_source(ctx)
    big = np.random.default_rng(0).integers(0, 256, 12 * 2**20, dtype=np.uint8).tobytes()  # incompressible
    _zip_with(good, {WANTED: big}, base=_zip_with(ctx.tmp / "b.zip", {}, good))
    (src,) = list_identities(root, "Low")
    tracemalloc.start()
    try:
        with open_identity(src) as reader:
            reader.copy_to(("S001", "L1", "E01", "C7", ".jpg"), ctx.tmp / "out.jpg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (ctx.tmp / "out.jpg").read_bytes() == big
    assert peak < 6 * 2**20, f"copying a 12 MiB member held {peak / 2**20:.1f} MiB"


# -- defect 5: empty or mis-laid zips -------------------------------------------------------------


def case_empty_and_mislaid_zips_fail(ctx: Ctx) -> None:
    from typer.testing import CliRunner

    from kface_cli.cli import app

    root, _ = _one_source(ctx)
    folder = root / "Low_Resolution"
    zipfile.ZipFile(folder / "19990101.zip", "w").close()
    _zip_with(folder / "19990102.zip", {"photos/front.jpg": b"\xff\xd8", "readme.txt": b"hi"})
    r = extract(root, workdir=ctx.tmp / "ws", res="Low")
    assert not r.ok and r.failed == 2 and r.extracted == 1
    errors = {f["id"]: f["error"] for f in r.failures}
    assert "no K-Face images in 19990101.zip" in errors["19990101"]
    assert "no K-Face images in 19990102.zip" in errors["19990102"]
    res = CliRunner().invoke(app, ["extract", str(root), "--res", "Low", "-w", str(ctx.tmp / "ws2")])
    assert res.exit_code == 1 and "19990101.zip" in res.output


# -- defect 6: read-only deployments --------------------------------------------------------------


def case_identify_on_a_read_only_folder(ctx: Ctx) -> None:
    folder = ctx.tmp / "deploy"
    g = _gallery(folder)
    for p in folder.iterdir():  # a deployment ships the gallery alone (no lock, no index yet)
        if p != g.path:
            p.unlink()
    before = _listing(folder)
    _read_only(ctx, folder)
    assert load_index(g).names == ["ALICE", "BOB"]  # a small gallery: exact numpy search, nothing to save
    ctx.monkeypatch.setattr(index_module, "NUMPY_EXACT_MAX", 0)  # a gallery large enough for a saved index
    loaded = load_index(g)  # what identify does: read, build, try to save
    assert loaded.names == ["ALICE", "BOB"] and len(loaded.index) == 2
    assert Gallery(g.path).facts().templates == 2 and manage_gallery(g.path)["facts"]["templates"] == 2
    assert _listing(folder) == before  # no lock file, no temporary file, no index written
    err = ctx.capfd.readouterr().err
    assert "read-only" in err and "in memory" in err and "Traceback" not in err


def case_writes_to_a_read_only_folder_say_one_line(ctx: Ctx) -> None:
    folder = ctx.tmp / "deploy"
    g = _gallery(folder)
    _read_only(ctx, folder)
    with pytest.raises(ReadOnlyError, match="read-only") as e:
        g.append(_templates(["CAROL"], start=5), MODEL)
    assert "damaged" not in str(e.value)
    with pytest.raises(ReadOnlyError, match="read-only"):
        manage_gallery(g.path, remove=["BOB"])
    with pytest.raises(ReadOnlyError):
        Gallery(folder / "new.h5").append(_templates(["DAN"]), MODEL)
    assert Gallery(g.path).read().names == ["ALICE", "BOB"]
    root, _ = _one_source(ctx)
    with pytest.raises(ReadOnlyError, match=f"make {folder} writable"):  # the folder that exists, not the one to create
        extract(root, workdir=folder / "ws", res="Low")


def case_read_only_gallery_file_is_never_rewritten(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    g.path.chmod(0o444)
    data = g.path.read_bytes()
    with pytest.raises(ReadOnlyError, match=r"read-only \(mode 0444\)"):
        manage_gallery(g.path, remove=["BOB"])
    with pytest.raises(ReadOnlyError, match="read-only"):
        g.append(_templates(["CAROL"], start=5), MODEL)
    assert g.path.read_bytes() == data and (g.path.stat().st_mode & 0o777) == 0o444
    assert load_index(g).names == ["ALICE", "BOB"]  # identify still works


def case_rewrite_keeps_the_file_mode(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    g.path.chmod(0o640)  # e.g. readable by a service's group
    manage_gallery(g.path, remove=["BOB"])
    assert (g.path.stat().st_mode & 0o777) == 0o640 and g.read().names == ["ALICE"]


def case_permission_denied_is_not_damage(ctx: Ctx) -> None:
    root, good = _one_source(ctx)

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    ctx.monkeypatch.setattr(source_mod.zipfile, "ZipFile", denied)
    r = extract(root, workdir=ctx.tmp / "ws", res="Low")
    (failure,) = r.failures
    assert "permission denied" in failure["error"] and "download" not in failure["error"].lower()
    g = _gallery(ctx.tmp / "g")
    ctx.monkeypatch.undo()
    import h5py

    ctx.monkeypatch.setattr(h5py, "File", lambda *a, **k: denied(g.path))
    with pytest.raises(InputError, match="permission denied") as e:
        g.read()
    assert "damaged" not in str(e.value)


# -- defect 7: a full disk ------------------------------------------------------------------------


def case_disk_full_during_extract(ctx: Ctx) -> None:
    root = make_source(ctx.tmp / "kface", n_ids=2)
    ws = ctx.tmp / "ws"
    extract(root, workdir=ws, res="Low", ids=(list_identities(root, "Low")[0].id,))
    saved = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    ctx.monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(DiskFullError, match="the disk is full") as e:
        extract(root, workdir=ws, res="Low", workers=1)
    assert "Nothing already saved was lost" in str(e.value)
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == saved  # no partial or temporary file


def case_disk_full_saving_the_index_after_enroll(ctx: Ctx) -> None:
    import faiss

    g = _gallery(ctx.tmp)  # committed
    real = faiss.write_index

    def full(index, path):
        raise RuntimeError(
            f"Error: 'ret == (size * 4)' failed: write error in {path}: 12 != 4096 (No space left on device)"
        )

    ctx.monkeypatch.setattr(faiss, "write_index", full)
    ctx.monkeypatch.setattr(index_module, "NUMPY_EXACT_MAX", 0)  # a gallery large enough for a saved index
    loaded = load_index(g)  # enroll's last step, and identify's first
    assert loaded.names == ["ALICE", "BOB"]
    err = ctx.capfd.readouterr().err
    assert "the disk is full" in err and "rebuilt next time" in err and "Traceback" not in err
    assert not index_paths(g.path)[0].exists() and not [p for p in ctx.tmp.iterdir() if p.name.startswith(".")]
    ctx.monkeypatch.setattr(faiss, "write_index", real)
    assert load_index(g).rebuilt and index_paths(g.path)[0].exists()  # rebuilt once there is room


def case_disk_full_mid_batch_keeps_committed_rows(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    ctx.monkeypatch.setattr(store, "_fsync_file", _enospc)
    with pytest.raises(DiskFullError, match="Every batch committed before this one is safe"):
        g.append(_templates(["CAROL"], start=5), MODEL)
    ctx.monkeypatch.undo()
    assert g.read().names == ["ALICE", "BOB"]  # the batch in flight was never counted
    assert g.append(_templates(["CAROL"], start=5), MODEL).added == 1


def _h5_disk_full(*_a, **_k):
    """What h5py raises when HDF5 cannot write a full chunk: a ValueError, not an OSError."""
    raise ValueError(
        "Can't write data (file write failed: time = Sat Dec  5 12:00:00 2026, filename = '.gallery.h5.x.h5', "
        "file descriptor = 7, errno = 28, error message = 'No space left on device', buf = 0x1, "
        "total write size = 1048576, bytes this sub-write = 1048576, bytes actually written = 18446744073709551615)"
    )


def case_disk_full_growing_or_removing_is_one_line(ctx: Ctx) -> None:
    """h5py's ValueError for ENOSPC while the grown or shortened copy is written: one line, nothing lost."""
    g = _gallery(ctx.tmp)
    data = g.path.read_bytes()
    ctx.monkeypatch.setattr(store, "_write_into", _h5_disk_full)
    with pytest.raises(DiskFullError, match="the disk is full") as e:
        g.append(_templates([f"P{i}" for i in range(1100)], start=5), MODEL)  # past the capacity: a rewrite
    assert "unchanged" in str(e.value)
    with pytest.raises(DiskFullError, match="the disk is full"):
        manage_gallery(g.path, remove=["BOB"])
    assert g.path.read_bytes() == data and g.read().names == ["ALICE", "BOB"]
    assert not [p for p in ctx.tmp.iterdir() if p.name.startswith(".")]
    ctx.monkeypatch.undo()
    ctx.monkeypatch.setattr(store, "_text_sum", _h5_disk_full)  # raised inside the in-place batch write
    with pytest.raises(DiskFullError, match="Every batch committed before this one is safe"):
        g.append(_templates(["CAROL"], start=5), MODEL)
    ctx.monkeypatch.undo()
    assert g.read().names == ["ALICE", "BOB"] and g.verify()["verified"]
    assert g.append(_templates(["CAROL"], start=5), MODEL).added == 1


def case_stale_temporary_of_a_killed_rewrite_is_removed(ctx: Ctx) -> None:
    """A rewrite killed before its rename leaves ``.gallery.h5.XXXXXXXX.h5``: the next writer removes it (under the lock)."""
    g = _gallery(ctx.tmp)
    stale = ctx.tmp / ".gallery.h5.k3x_9qzp.h5"
    stale.write_bytes(b"\0" * 300_000)
    index_tmp = ctx.tmp / ".gallery.faiss.ab12cd34.faiss"
    index_tmp.write_bytes(b"\0" * 10)
    other = ctx.tmp / ".other.h5.k3x_9qzp.h5"  # not ours: kept
    other.write_bytes(b"x")
    ctx.monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 0.3)  # readers (Gallery._open)
    ctx.monkeypatch.setattr(lock, "LOCK_WAIT_SECONDS", 0.3)  # writers (writer_lock)
    from filelock import FileLock

    holder = FileLock(lock.lock_path(g.path))
    holder.acquire()  # another writer at work: its temporary may be live, nothing is removed
    try:
        with pytest.raises(InputError, match="in use by another kface process"):
            g.append(_templates(["CAROL"], start=5), MODEL)
        assert stale.exists() and index_tmp.exists()
    finally:
        holder.release()
    ctx.capfd.readouterr()
    assert g.append(_templates(["CAROL"], start=5), MODEL).added == 1
    assert not stale.exists() and not index_tmp.exists() and other.exists()
    err = ctx.capfd.readouterr().err
    assert "removed 2 temporary files" in err and "interrupted write" in err


def case_disk_full_during_remove(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    data = g.path.read_bytes()
    real = store._create_datasets

    def full(f, *a, **k):
        real(f, *a, **k)
        raise OSError(errno.ENOSPC, "Can't synchronously write data (No space left on device)")

    ctx.monkeypatch.setattr(store, "_create_datasets", full)
    with pytest.raises(DiskFullError, match="the disk is full"):
        manage_gallery(g.path, remove=["BOB"])
    assert g.path.read_bytes() == data
    assert not [p for p in ctx.tmp.iterdir() if p.name.startswith(".")]  # no temporary file left


# -- defects 8 and 9: options and config files ----------------------------------------------------


def case_unbounded_options_and_non_utf8_config(ctx: Ctx) -> None:
    from typer.testing import CliRunner

    from kface_cli.cli import app

    runner = CliRunner()
    (ctx.tmp / "raw" / "Middle" / "19990101").mkdir(parents=True)
    for value in ("nan", "inf", "1e6"):
        r = runner.invoke(app, ["crop", "--margin", value, "-w", str(ctx.tmp)])
        assert r.exit_code == 2 and "margin" in r.output and "Traceback" not in r.output, r.output
    cfg = ctx.tmp / "bad.toml"
    cfg.write_bytes(b"epochs = 1\nname = '\xff\xfe'\n")
    r = runner.invoke(app, ["train", "--config", str(cfg), "-w", str(ctx.tmp)])
    assert r.exit_code == 2 and "UTF-8" in r.output, r.output


# -- defect 11: links out of an unpacked source ---------------------------------------------------


def case_symlinks_out_of_the_source_tree(ctx: Ctx) -> None:
    root, good = _one_source(ctx)
    tree = good.with_suffix("")
    with zipfile.ZipFile(good) as zf:
        zf.extractall(tree)
    good.unlink()
    secret = ctx.tmp / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (tree / "S001/L1/E01/C7.txt").unlink()
    (tree / "S001/L1/E01/C7.txt").symlink_to(secret)
    outside = ctx.tmp / "outside"
    (outside / "C8.jpg").parent.mkdir(parents=True)
    (outside / "C8.jpg").write_bytes((tree / WANTED).read_bytes())
    for p in (tree / "S001/L3/E02").iterdir():
        p.unlink()
    (tree / "S001/L3/E02").rmdir()
    (tree / "S001/L3/E02").symlink_to(outside, target_is_directory=True)
    r = extract(root, workdir=ctx.tmp / "ws", res="Low")
    assert r.unsafe_members == 2
    copied = [p for p in (ctx.tmp / "ws").rglob("*") if p.is_file()]
    assert all("root:x" not in p.read_text(errors="replace") for p in copied)
    assert not list((ctx.tmp / "ws").rglob("E02/C8.jpg"))
    assert "link out of the folder" in ctx.capfd.readouterr().err


# -- defect 12: nothing stray on stderr -----------------------------------------------------------


def _png(width=40, height=30) -> bytes:
    import cv2

    ok, enc = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8))
    return enc.tobytes()


def _with_crc(data: bytearray, start: int) -> bytes:
    """Recompute the CRC of the chunk starting at ``start`` (so only the damage inside it remains)."""
    import zlib

    length = int.from_bytes(data[start : start + 4], "big")
    end = start + 8 + length
    data[end : end + 4] = zlib.crc32(bytes(data[start + 4 : end])).to_bytes(4, "big")
    return bytes(data)


def case_damaged_pngs_print_nothing(ctx: Ctx) -> None:
    import zlib

    png = _png()
    idat = png.index(b"IDAT") - 4
    crc = bytearray(png)
    crc[idat + 20] ^= 0xFF
    adler = bytearray(png)  # zlib stream with a wrong checksum, chunk CRC fixed up
    length = int.from_bytes(png[idat : idat + 4], "big")
    adler[idat + 8 + length - 1] ^= 0xFF
    rows = zlib.decompress(png[idat + 8 : idat + 8 + length])
    bad_filter = bytearray(rows)
    bad_filter[0] = 9
    packed = zlib.compress(bytes(bad_filter))
    filt = bytearray(png[:idat]) + len(packed).to_bytes(4, "big") + b"IDAT" + packed + b"\0\0\0\0"
    filt = bytearray(_with_crc(filt, idat)) + png[idat + 12 + length :]
    cases = {
        "truncated": png[: len(png) // 2],
        "crc": bytes(crc),
        "zlib": _with_crc(adler, idat),
        "filter": bytes(filt),
    }
    ctx.capfd.readouterr()
    for name, data in cases.items():
        with pytest.raises(InputError, match="cannot read image"):
            decode_image(data, f"{name}.png")
    assert decode_image(png).shape == (30, 40, 3)
    out, err = ctx.capfd.readouterr()
    assert err == "" and out == "", err


def case_landmarks_with_nan_huge_or_coincident_points(ctx: Ctx) -> None:
    boxes = "100\t80\t120\t150\n120\t110\t20\t10\n160\t110\t20\t10\n150\t140\t15\t20\n150\t170\t40\t15\n"
    good = ["130\t120", "180\t120", "155\t145", "135\t170", "175\t170", "110\t130", "200\t130"]
    for first in ("nan\tnan", "1e300\t1e300", "inf\t0"):
        with pytest.raises(InputError, match="line 1 is not pixel coordinates"):
            parse_annotation("\n".join([first, *good[1:]]) + "\n" + boxes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stray numpy RuntimeWarning fails the case
        with pytest.raises(InputError, match="all at one place"):
            parse_annotation("\n".join(["100\t100"] * 7) + "\n" + boxes)
        assert parse_annotation("\n".join(good) + "\n" + boxes).points.shape == (7, 2)


# -- issue 13: the lock works everywhere, readers create nothing ----------------------------------

_HOLD_OPEN = textwrap.dedent(
    """
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "r+")  # a writer in the middle of a batch
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
    f.close()
    """
)


def case_reader_waits_for_a_writer_and_creates_no_lock(ctx: Ctx) -> None:
    g = _gallery(ctx.tmp)
    lock.lock_path(g.path).unlink()
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(g.path), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        assert g.read().names == ["ALICE", "BOB"]
        assert time.monotonic() - t0 > 0.3  # it waited for the writer instead of failing
    finally:
        proc.wait(timeout=30)
    assert "waiting for another kface process" in ctx.capfd.readouterr().err
    assert not lock.lock_path(g.path).exists()


def _run_variant(fn: Callable, variant: str, ctx: Ctx) -> None:
    fn(ctx, variant)


# == round 2 (issue 25): read-only, full disk, zips, names, special files, bounds, output =========

#: Cases with several variants: ``name -> (function(ctx, variant), variants)``; each variant is
#: its own entry of the matrix (``name[variant]``).
VARIANT_CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {}


def variants(*names: str) -> Callable:
    def register(fn: Callable) -> Callable:
        VARIANT_CASES[fn.__name__.removeprefix("variant_")] = (fn, names)
        return fn

    return register


def _read_only_everywhere(ctx: Ctx, folder: Path) -> None:
    """:func:`_read_only`, plus Python's own ``open()`` for writing (``log.jsonl``, torch, numpy)."""
    import builtins

    _read_only(ctx, folder)
    real = builtins.open

    def guarded(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) and _inside(file, folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(file))
        return real(file, mode, *args, **kwargs)

    ctx.monkeypatch.setattr(builtins, "open", guarded)


def _cli(*args: str):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"KFACE_NO_PROGRESS": "1", "COLUMNS": "200"})


def _one_line(result, *, code: int = 2) -> str:
    """The CLI result's output, checked to be a clean refusal: exit ``code``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.output


def _crops(folder: Path, ids=("19072641", "19072642", "19072643", "19072644"), each: int = 3) -> Path:
    from kface_cli.face.imageio import write_image

    rng = np.random.default_rng(0)
    for ident in ids:
        for k in range(each):
            write_image(
                folder / ident / f"{ident}_S001_L1_E0{k + 1}_C7.jpg", rng.integers(0, 255, (112, 112, 3), np.uint8)
            )
    return folder


def case_read_only_split(ctx: Ctx) -> None:
    from kface_cli.prepare.split import split

    ws = ctx.tmp / "ws"
    _crops(ws / "faces" / "Low")
    _read_only_everywhere(ctx, ws)
    with pytest.raises(ReadOnlyError, match=f"make {ws} writable"):
        split(ws, res="Low")
    assert "read-only" in _one_line(_cli("split", "-w", ws, "--res", "Low"))
    assert sorted(p.name for p in ws.iterdir()) == ["faces"]  # no split.tmp left


def case_read_only_crop(ctx: Ctx) -> None:
    from kface_cli.prepare.crop import crop

    root, _ = _one_source(ctx)
    ws = ctx.tmp / "ws"
    extract(root, workdir=ws, res="Low")
    _read_only_everywhere(ctx, ws)
    with pytest.raises(ReadOnlyError, match=f"make {ws} writable"):
        crop(ws, res="Low")
    assert "read-only" in _one_line(_cli("crop", "-w", ws, "--res", "Low"))
    assert not (ws / "faces").exists()


def case_read_only_annotate_and_report(ctx: Ctx) -> None:
    from helpers.embedders import FakeEmbedder
    from helpers.gallery import SidecarDetector, people_folder

    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify
    from kface_cli.evaluate.report import write_report

    people = people_folder(ctx.tmp / "people", {"Alice": "19072652", "Bob": "19072653"}, photos_each=1)
    gallery = ctx.tmp / "g" / "gallery.h5"
    enroll_folder(people, gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    ro = ctx.tmp / "ro"
    ro.mkdir()
    _read_only_everywhere(ctx, ro)
    with pytest.raises(ReadOnlyError, match=f"make {ro} writable"):
        identify([people], gallery, FakeEmbedder("pixels"), detector=SidecarDetector(), annotate=ro / "annotated")
    with pytest.raises(ReadOnlyError, match="read-only"):
        write_report(None, ro / "reports" / "run")  # what `kface evaluate` writes first
    assert list(ro.iterdir()) == []


def case_read_only_train_leaves_no_run_folder(ctx: Ctx) -> None:
    ws = ctx.tmp / "ws"
    ws.mkdir()
    (ws / "runs").mkdir()
    _read_only_everywhere(ctx, ws / "runs")
    out = _one_line(
        _cli(
            "train",
            "-w",
            ws,
            "--data",
            "synthetic:3x2",
            "--network",
            "mbf",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--embedding-size",
            "8",
            "--name",
            "r",
        )
    )
    assert "read-only" in out and str(ws / "runs") in out
    assert list((ws / "runs").iterdir()) == []


@variants("sample-data --seed -1", "split --faces MISSING", "train --subcenters 0")
def variant_option_out_of_range_is_one_line(ctx: Ctx, what: str) -> None:
    from kface_cli.choices import check_seed
    from kface_cli.prepare.split import split
    from kface_cli.synth.sample_data import generate_sample_data
    from kface_cli.train.config import TrainConfig

    if what == "sample-data --seed -1":
        out = _one_line(_cli("sample-data", ctx.tmp / "s", "--seed", "-1"))
        assert "--seed" in out and not (ctx.tmp / "s").exists()
        with pytest.raises(InputError, match="--seed"):
            generate_sample_data(ctx.tmp / "s", n_ids=1, seed=-1)
        with pytest.raises(InputError, match="--seed"):
            check_seed(2**32)
        with pytest.raises(InputError, match="--seed"):
            split(ctx.tmp, faces_dir=_crops(ctx.tmp / "faces"), seed=-1)
    elif what == "split --faces MISSING":
        assert "face crops folder not found: MISSING" in _one_line(_cli("split", "-w", ctx.tmp, "--faces", "MISSING"))
    else:
        with pytest.raises(KFaceError, match="--subcenters must be at least 1"):
            TrainConfig(subcenters=0).validate()
        out = _one_line(_cli("train", "-w", ctx.tmp, "--data", "synthetic:3x2", "--subcenters", "0", "--name", "s0"))
        assert "--subcenters" in out and not (ctx.tmp / "runs").exists()  # no run folder left behind


def case_max_frames_zero_and_csv_onto_a_folder(ctx: Ctx) -> None:
    from helpers.embedders import FakeEmbedder
    from helpers.gallery import SidecarDetector, people_folder

    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify, write_csv

    people = people_folder(ctx.tmp / "people", {"Alice": "19072652"}, photos_each=1)
    gallery = ctx.tmp / "gallery.h5"
    enroll_folder(people, gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    with pytest.raises(InputError, match="--max-frames must be at least 1"):
        identify([people], gallery, FakeEmbedder("pixels"), detector=SidecarDetector(), max_frames=0)
    result = identify([people], gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    folder = ctx.tmp / "results"
    folder.mkdir()
    with pytest.raises(KFaceError, match="it is a folder"):
        write_csv(result, folder)  # `identify --csv DIR`
    assert list(folder.iterdir()) == []
    out = _one_line(_cli("identify", people, "-g", gallery, "--csv", folder))  # refused before the model loads
    assert "--csv must be a file, got a folder" in out
    assert [p.name for p in ctx.tmp.iterdir() if p.name.startswith(".")] == []


def case_disk_full_splitting_keeps_the_old_split(ctx: Ctx) -> None:
    from kface_cli.prepare import split as split_mod

    ws = ctx.tmp / "ws"
    _crops(ws / "faces" / "Low")
    first = split_mod.split(ws, res="Low")
    before = sorted(str(p.relative_to(ws)) for p in first.out.rglob("*"))
    real, calls = split_mod.link_or_copy, []

    def full_after_two(src, dst):
        calls.append(dst)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    ctx.monkeypatch.setattr(split_mod, "link_or_copy", full_after_two)
    with pytest.raises(DiskFullError, match="the disk is full"):
        split_mod.split(ws, res="Low", seed=1)
    assert sorted(str(p.relative_to(ws)) for p in first.out.rglob("*")) == before
    assert sorted(p.name for p in ws.iterdir()) == ["faces", "split"]  # no split.tmp filling the disk


@variants("e.npy vectors", "e.npy names", "e.h5")
def variant_disk_full_saving_embeddings_keeps_the_old_file(ctx: Ctx, what: str) -> None:
    from kface_cli.deploy.compare import load_embeddings, save_embeddings

    out = ctx.tmp / what.split()[0]
    save_embeddings(out, ["a", "b"], np.eye(2, 4, dtype=np.float32))
    saved = {p.name: p.read_bytes() for p in ctx.tmp.iterdir()}
    failing_call = 2 if what == "e.npy names" else 1  # the vectors' write, then the names' write
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    ctx.monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError):
        save_embeddings(out, ["c", "d", "e"], np.ones((3, 4), dtype=np.float32))
    ctx.monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in ctx.tmp.iterdir()} == saved  # no new file, no temporary file
    assert load_embeddings(out)[0] == ["a", "b"]
    assert "Traceback" not in ctx.capfd.readouterr().err


def case_disk_full_writing_a_checkpoint(ctx: Ctx) -> None:
    import torch

    from kface_cli.train import checkpoint as ck

    path = ctx.tmp / "checkpoint.pt"
    ck.save_torch(path, {"w": torch.zeros(4)})
    data = path.read_bytes()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    ctx.monkeypatch.setattr(ck, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(DiskFullError, match="the disk is full"):
        ck.save_torch(path, {"w": torch.zeros(100_000)})
    assert path.read_bytes() == data and sorted(p.name for p in ctx.tmp.iterdir()) == ["checkpoint.pt"]


def case_full_or_closed_stdout(ctx: Ctx) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    g = _gallery(ctx.tmp)
    for flag in ([], ["--json"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run(
                [sys.executable, "-m", "kface_cli", "gallery", "-g", str(g.path), *flag],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO), "KFACE_NO_PROGRESS": "1"},
                timeout=120,
            )
        assert r.returncode == 2, r.stderr
        assert "the disk is full" in r.stderr and "standard output" in r.stderr
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    # a reader that went away (`kface ... | head -0`): quiet, exit 141 like SIGPIPE
    read_end, write_end = os.pipe()
    os.close(read_end)
    r = subprocess.run(
        [sys.executable, "-m", "kface_cli", "gallery", "-g", str(g.path), "--json"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "KFACE_NO_PROGRESS": "1"},
        timeout=120,
    )
    os.close(write_end)
    assert r.returncode == 141 and r.stderr == "", r.stderr
    assert Gallery(g.path).read().names == ["ALICE", "BOB"]


_MEMORY_ERRORS = {
    "MemoryError": MemoryError(),
    "ONNX Runtime": RuntimeError(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 1"
    ),
    "std::bad_alloc": RuntimeError("std::bad_alloc"),
    "torch": RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes"),
    "a library under ulimit -v": ImportError("libtorch_cpu.so: failed to map segment from shared object"),
    "no thread": RuntimeError("can't start new thread"),
}


@variants(*_MEMORY_ERRORS)
def variant_out_of_memory_is_one_line(ctx: Ctx, kind: str) -> None:
    from kface_cli.gallery import manage

    g = _gallery(ctx.tmp)

    def fails(*a, **k):
        raise _MEMORY_ERRORS[kind]

    ctx.monkeypatch.setattr(manage, "manage_gallery", fails)
    out = _one_line(_cli("gallery", "-g", g.path))
    assert "out of memory" in out and len(out.strip().splitlines()) <= 2, out
    ctx.monkeypatch.setattr(manage, "manage_gallery", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert isinstance(_cli("gallery", "-g", g.path).exception, RuntimeError)  # real bugs keep their traceback


def case_stray_warnings_are_silenced_unless_debug(ctx: Ctx) -> None:
    from kface_cli.gallery import manage

    g = _gallery(ctx.tmp)

    def noisy(*a, **k):
        warnings.warn("stray third-party warning", UserWarning, stacklevel=1)
        return manage_gallery(*a, **k)

    ctx.monkeypatch.setattr(manage, "manage_gallery", noisy)
    for flags, shown in (([], False), (["--debug"], True)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = _cli("gallery", "-g", g.path, *flags)
        assert r.exit_code == 0 and "stray third-party warning" not in r.output
        assert any("stray third-party warning" in str(w.message) for w in seen) == shown


def case_os_errors_escaping_a_command_are_one_line(ctx: Ctx) -> None:
    from kface_cli.atomic import os_error

    folder = ctx.tmp / "deploy"
    folder.mkdir()
    e = os_error(OSError(errno.EROFS, "Read-only file system", str(folder / "runs")))
    assert isinstance(e, ReadOnlyError) and f"make {folder} writable" in str(e)
    assert isinstance(os_error(OSError(errno.ENOSPC, "No space left on device")), DiskFullError)
    assert isinstance(os_error(PermissionError(errno.EACCES, "Permission denied", str(folder / "x"))), ReadOnlyError)
    assert os_error(OSError(errno.EIO, "I/O error", "x")) is None  # not the user's doing: traceback kept


def _patch_zip(path: Path, member: str, *, flag_bits: int = 0, method: int | None = None) -> None:
    """Set ``flag_bits`` / the compression method of ``member`` in its local and central headers."""
    import struct

    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, flag_at, method_at, name_len_at, name_at in (
        (b"PK\x03\x04", 6, 8, 26, 30),
        (b"PK\x01\x02", 8, 10, 28, 46),
    ):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            start = i + 4
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if bytes(data[i + name_at : i + name_at + n]) != name:
                continue
            struct.pack_into("<H", data, i + flag_at, struct.unpack_from("<H", data, i + flag_at)[0] | flag_bits)
            if method is not None:
                struct.pack_into("<H", data, i + method_at, method)
    path.write_bytes(bytes(data))


@variants("encrypted", "Deflate64", "duplicate names")
def variant_unreadable_zip_member_is_skipped(ctx: Ctx, why: str) -> None:
    root, good = _one_source(ctx)
    if why == "duplicate names":  # checked on the first, extracted from the last: neither is used now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
            with zipfile.ZipFile(good, "a") as z:
                z.writestr(WANTED, b"\xff\xd8 a second, different member of the same name")
        why = "2 members with this name"
    else:
        _patch_zip(good, WANTED, **({"flag_bits": 0x1} if why == "encrypted" else {"method": 9}))
    ws = ctx.tmp / "ws"
    r = extract(root, workdir=ws, res="Low")
    assert not r.failures and r.images > 0, r
    err = ctx.capfd.readouterr().err
    assert why in err and WANTED in err and good.name in err and "Traceback" not in err
    assert not [p for p in ws.rglob("*.jpg") if p.as_posix().endswith(WANTED)]


@variants("encrypted", "Deflate64")
def variant_model_pack_with_an_unreadable_member_is_refused(ctx: Ctx, why: str) -> None:
    from kface_cli.archive import extract_all

    pack = _zip_with(ctx.tmp / "pack.zip", {"w600k_r50.onnx": b"\x08" * 4096, "README.txt": b"hi"})
    _patch_zip(pack, "w600k_r50.onnx", **({"flag_bits": 0x1} if why == "encrypted" else {"method": 9}))
    with pytest.raises(InputError, match=why) as e:
        extract_all(pack, ctx.tmp / "out", max_member_bytes=2**20, max_total_bytes=2**20)
    assert "w600k_r50.onnx" in str(e.value) and not (ctx.tmp / "out").exists()


def _non_utf8(raw: bytes) -> str:
    return os.fsdecode(raw)


KOREAN_CP949 = "홍길동".encode("cp949")  # a folder name from a Windows zip, not valid UTF-8


def case_non_utf8_names_round_trip(ctx: Ctx) -> None:
    import json

    from helpers.embedders import FakeEmbedder
    from helpers.gallery import SidecarDetector, render_photo

    from kface_cli.console import printable, to_json
    from kface_cli.deploy.compare import load_embeddings, save_embeddings
    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify, write_csv

    name = _non_utf8(KOREAN_CP949)
    people = ctx.tmp / "people"
    render_photo(people / name / "a.jpg", "19072652")
    render_photo(people / "Bob" / "b.jpg", "19072653")
    gallery = ctx.tmp / "gallery.h5"
    enroll_folder(people, gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    assert sorted(Gallery(gallery).read().names) == sorted(["Bob", name])  # stored as the bytes it was
    result = identify([people / name / "a.jpg"], gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    assert result.images[0].faces[0].name == name
    csv_path = write_csv(result, ctx.tmp / "out.csv")
    assert KOREAN_CP949 in csv_path.read_bytes()
    assert json.loads(to_json({"name": name}))["name"] == name  # JSON: an escape that reads back
    assert "\ufffd" in printable(name) and KOREAN_CP949 not in printable(name).encode()
    save_embeddings(ctx.tmp / "e.npy", [name], np.ones((1, 4), dtype=np.float32))
    assert (ctx.tmp / "e.names.txt").read_bytes() == KOREAN_CP949 + b"\n"
    for out in ("e.npy", "e.h5"):  # `embed --out`: the names come back as they were
        save_embeddings(ctx.tmp / out, [name, "Bob"], np.ones((2, 4), dtype=np.float32))
        assert load_embeddings(ctx.tmp / out)[0] == [name, "Bob"]
    manage_gallery(gallery, remove=[name])
    assert Gallery(gallery).read().names == ["Bob"]


def case_a_name_that_cannot_be_stored_leaves_no_gallery(ctx: Ctx) -> None:
    g = Gallery(ctx.tmp / "new.h5")
    with pytest.raises(InputError, match="too long"):
        g.append(_templates(["X" * 5000]), MODEL)
    assert not g.path.exists()


def case_special_files_named_like_photos_are_refused_unopened(ctx: Ctx) -> None:
    import socket
    import threading

    from kface_cli.deploy.sources import expand_inputs
    from kface_cli.face.imageio import UnreadableImageError, read_image

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = ctx.tmp / "photo.jpg"
    os.mkfifo(fifo)
    sock_path = ctx.tmp / "s.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    errors: list = []

    def attempt():
        for p, kind in ((fifo, "named pipe"), (sock_path, "socket")):
            for fn in (read_image, lambda p: expand_inputs([p])):
                try:
                    fn(p)
                except UnreadableImageError as e:
                    errors.append((kind, str(e)))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout=20)
    sock.close()
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO named photo.jpg blocked")
    assert len(errors) == 4 and all(kind in message and "not a photo" in message for kind, message in errors)
    from kface_cli.embedding.loading import resolve_model_path

    model = ctx.tmp / "model.onnx"
    os.mkfifo(model)
    with pytest.raises(InputError, match="named pipe.*not a model file"):
        resolve_model_path(model, ctx.tmp)  # `--model model.onnx`, checked before torch or ONNX Runtime opens it
    gallery = ctx.tmp / "gallery.h5"
    os.mkfifo(gallery)
    with pytest.raises(InputError, match="not a regular file"):
        Gallery(gallery).read()  # `identify/enroll/gallery -g gallery.h5`, before HDF5 opens it


def case_bin_repeating_one_image_through_pickle_memo(ctx: Ctx) -> None:
    import pickle

    from kface_cli.formats import binset

    img = _png()
    data = pickle.dumps(([img] * 20_000, [True] * 10_000), protocol=4)  # one image, 20,000 references
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="repeated through pickle references"):
            binset.safe_load_bin_pickle(data, "evil.bin")
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    finally:
        tracemalloc.stop()
    ctx.monkeypatch.setattr(binset, "MAX_BIN_IMAGES", 10)
    with pytest.raises(InputError, match="at most 10"):
        binset.safe_load_bin_pickle(pickle.dumps(([bytes([i]) * 8 for i in range(12)], [True] * 6)), "big.bin")


def _rec(folder: Path, records: dict[int, tuple], property_text: str | None = None) -> Path:
    from kface_cli.formats.recordio import RecordHeader, RecordIOWriter, pack

    folder.mkdir(parents=True, exist_ok=True)
    with RecordIOWriter(folder / "train.rec") as w:
        for key, (label, data) in records.items():
            w.write(key, pack(RecordHeader(label=label), data))
    if property_text is not None:
        (folder / "property").write_text(property_text)
    return folder


def _hostile_rec_records(what: str) -> tuple[dict[int, tuple], str | None]:
    img = _png()
    return {
        "identity range to 2e9": ({0: ((3.0, 2e9), b""), 1: (0.0, img), 2: (0.0, img), 3: ((1.0, 3.0), b"")}, None),
        "image keys to 2e9": ({0: ((2e9, 2e9 + 2), b""), 1: (0.0, img)}, None),
        "NaN label": ({1: (float("nan"), img), 2: (0.0, img)}, None),
        "label 1e12": ({1: (1e12, img), 2: (0.0, img)}, None),
        "negative label": ({1: (-1.0, img), 2: (0.0, img)}, None),
        "property of 1e12 classes": ({1: (0.0, img), 2: (1.0, img)}, "1000000000000,112,112"),
        "property with more classes than images": ({1: (0.0, img), 2: (1.0, img)}, "5000,112,112"),
    }[what]


@variants(
    "identity range to 2e9",
    "image keys to 2e9",
    "NaN label",
    "label 1e12",
    "negative label",
    "property of 1e12 classes",
    "property with more classes than images",
)
def variant_hostile_train_rec(ctx: Ctx, what: str) -> None:
    from kface_cli.train.datasets import RecordDataset

    records, prop = _hostile_rec_records(what)
    folder = _rec(ctx.tmp / "rec", records, prop)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as e:
            RecordDataset(folder)
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20  # refused before allocating
    finally:
        tracemalloc.stop()
    assert "train.rec" in str(e.value) or "property" in str(e.value)
    img = _png()
    ok = RecordDataset(_rec(ctx.tmp / "ok", {1: (0.0, img), 2: (1.0, img)}, "2,112,112"))
    assert ok.num_classes == 2 and ok.labels.tolist() == [0, 1]


def case_names_and_paths_are_printed_as_text(ctx: Ctx) -> None:
    from kface_cli import console

    console.error("cannot read [/tmp/x/[draft] photo.jpg")
    console.warn("skipped [bold]x[/bold].jpg")
    console.info("done [draft] photo.jpg")
    console.show(console.table("Faces in [draft]", ["image"], [["[draft] photo.jpg"], [_non_utf8(KOREAN_CP949)]]))
    out, err = ctx.capfd.readouterr()
    assert "[/tmp/x/[draft] photo.jpg" in err and "[bold]x[/bold].jpg" in err and "done [draft] photo.jpg" in err
    assert "Faces in [draft]" in out and "[draft] photo.jpg" in out and "\ufffd" in out
    missing = ctx.tmp / "[/b" / "[draft] photo.jpg"
    out = _one_line(_cli("detect", missing))
    assert "[draft] photo.jpg" in out and "MarkupError" not in out


CASES: dict[str, Callable[[Ctx], None]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_") and callable(fn)
}
CASES.update(
    {
        f"{name}[{variant}]": functools.partial(_run_variant, fn, variant)
        for name, (fn, names) in VARIANT_CASES.items()
        for variant in names
    }
)


#: Cases slower than ~3 s on their own (importing torch).
SLOW = {
    "pickle_that_runs_code",
    "read_only_train_leaves_no_run_folder",
    "disk_full_writing_a_checkpoint",
    "full_or_closed_stdout",
    "read_only_crop",
    "torchscript_needs_trust_model",
    "zero_or_nan_model_says_nothing",
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_hostile(case, tmp_path, monkeypatch, capfd):
    CASES[case](Ctx(tmp_path, monkeypatch, capfd))
