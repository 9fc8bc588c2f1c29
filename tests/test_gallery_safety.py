"""Gallery integrity: every tampering is found (on read, by ``--check``), nobody is named from a changed file.

The digest covers every committed row (names, sources, boxes, hashes, embeddings), the committed
extent itself, the model fingerprint and the schema; the search index is trusted only when the
gallery vouches for it. Older (schema 1) galleries are read with a warning and upgraded by
``kface gallery --upgrade``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from gallery_helpers import SidecarDetector, mbf_model, render_photo  # noqa: F401 (fixture)
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.errors import InputError, KFaceError
from kface_cli.gallery import index as index_mod
from kface_cli.gallery import store
from kface_cli.gallery.index import build_index, index_paths, load_index, search_identities
from kface_cli.gallery.manage import manage_gallery
from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash

MODEL = ModelInfo("f" * 20, 16, "mbf", "/runs/a")


def _templates(names, start=0, dim=16):
    rng = np.random.default_rng(start)
    out = []
    for i, name in enumerate(names, start):
        e = rng.standard_normal(dim).astype(np.float32)
        out.append(
            Template(name, e / np.linalg.norm(e), f"/photos/{name}/{i}.jpg", content_hash(f"{name}-{i}".encode()))
        )
    return out


def _flip_in_file(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite ``old`` with ``new`` where it sits in the file, touching nothing else."""
    data = path.read_bytes()
    assert data.count(old) == 1, "test setup: the bytes to change must occur exactly once"
    at = data.index(old)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(new)


def _gallery(tmp_path) -> tuple[Gallery, list[Template]]:
    g = Gallery(tmp_path / "gallery.h5")
    ts = _templates(["ALICE", "BOB"])
    g.append(ts[:1], MODEL)
    g.append(ts[1:], MODEL)  # two batches: the digest is extended, not recomputed
    assert g.read().names == ["ALICE", "BOB"]
    return g, ts


def _stored(e: np.ndarray) -> bytes:
    return (e / np.linalg.norm(e)).astype(np.float16).tobytes()


def _check_fails(path: Path, match: str) -> None:
    """``kface gallery --check`` exits 2 with one line naming the file."""
    r = CliRunner().invoke(app, ["gallery", "--check", "-g", str(path)])
    assert r.exit_code == 2, r.output
    assert match in r.output and str(path.name) in r.output and "Traceback" not in r.output


def _never_names(g: Gallery, stranger: np.ndarray) -> None:
    """What identify does (load the index, search): refused, never a name for the stranger."""
    with pytest.raises(KFaceError):
        loaded = load_index(g)
        search_identities(loaded, stranger[None], top_k=1)


def test_name_changed_in_place_is_refused(tmp_path):
    g, _ = _gallery(tmp_path)
    _flip_in_file(g.path, b"ALICE/photos", b"MALLO/photos")  # the name, in the text column
    with pytest.raises(InputError, match="integrity check: names changed"):
        g.read(embeddings=False)
    with pytest.raises(KFaceError, match="names"):
        manage_gallery(g.path, check=True)
    _check_fails(g.path, "names")


def test_embedding_changed_in_place_is_refused(tmp_path):
    g, ts = _gallery(tmp_path)
    raw = _stored(ts[1].embedding)
    changed = bytearray(raw)
    changed[5] ^= 0x01
    _flip_in_file(g.path, raw, bytes(changed))
    assert g.read(embeddings=False).names == ["ALICE", "BOB"]  # names alone still verify
    with pytest.raises(InputError, match="integrity check: embeddings changed"):
        g.read(embeddings=True)
    with pytest.raises(InputError, match="embeddings"):
        manage_gallery(g.path, rebuild_index=True)  # no index is built from changed embeddings
    _check_fails(g.path, "embeddings")


def test_digest_deleted_and_rows_edited_is_refused(tmp_path):
    """Issue 25 defect 6: without its digest a current gallery is not read as a "pre-digest" one."""
    g, ts = _gallery(tmp_path)
    stranger = _templates(["X"], start=99)[0].embedding
    with h5py.File(g.path, "r+") as f:
        del f.attrs["digest"]
        f["embeddings"][0] = stranger.astype(np.float16)  # ALICE's row now matches a stranger
    with pytest.raises(InputError, match="has no digest"):
        g.read()
    _never_names(g, stranger)
    _check_fails(g.path, "no digest")


def test_row_written_past_the_committed_rows_is_never_read(tmp_path):
    """Issue 25 defect 6: a stranger's row added after the committed ones, with the counts in the digest bumped."""
    g, _ = _gallery(tmp_path)
    stranger = _templates(["X"], start=99)[0].embedding
    with h5py.File(g.path, "r+") as f:
        record = f.attrs["digest"].decode()
        _, count, text = record.split(":")[:3]
        n, t = int(count), int(text)
        name = b"ALICE"
        f["embeddings"][n] = stranger.astype(np.float16)
        f["lengths"][n] = (len(name), 0)
        f["text"][t : t + len(name)] = np.frombuffer(name, np.uint8)
        parts = record.split(":")
        parts[1], parts[2] = f"{n + 1:012d}", f"{t + len(name):016d}"
        f.attrs["digest"] = np.bytes_(":".join(parts).encode())
    with pytest.raises(InputError, match="integrity check"):
        g.read()
    _never_names(g, stranger)
    _check_fails(g.path, "integrity check")


def test_row_written_past_the_committed_rows_without_the_counts_is_invisible(tmp_path):
    g, _ = _gallery(tmp_path)
    stranger = _templates(["X"], start=99)[0].embedding
    with h5py.File(g.path, "r+") as f:
        f["embeddings"][2] = stranger.astype(np.float16)  # room past the committed rows
        f["lengths"][2] = (5, 0)
    rows = g.read()
    assert rows.names == ["ALICE", "BOB"] and len(rows.embeddings) == 2
    assert manage_gallery(g.path, check=True)["check"]["rows_checked"] == 2


@pytest.mark.parametrize(
    ("attr", "value"),
    [("fingerprint", "0" * 20), ("model_source", "/elsewhere"), ("network", "r50"), ("created", 1.0)],
)
def test_model_and_schema_attributes_are_covered(tmp_path, attr, value):
    g, _ = _gallery(tmp_path)
    with h5py.File(g.path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(InputError, match="its model or schema changed"):
        g.read(embeddings=False)
    _check_fails(g.path, "model or schema")


def test_edited_search_index_is_rebuilt_not_trusted(tmp_path, monkeypatch, capfd):
    """Issue 25 defect 6: gallery.faiss made to answer a stranger's face with ALICE's row."""
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)  # large enough for a saved index
    g, ts = _gallery(tmp_path)
    assert load_index(g).rebuilt and not load_index(g).rebuilt  # saved, then trusted
    stranger = _templates(["X"], start=99)[0].embedding
    forged = build_index(np.stack([stranger, ts[1].embedding]), "flat", checksum=g.read().checksum)
    faiss_path, meta_path = index_paths(g.path)
    import faiss

    faiss.write_index(forged.index, str(faiss_path))
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = index_mod._file_sha256(faiss_path)  # the sidecar updated to match
    meta_path.write_text(json.dumps(meta))
    capfd.readouterr()
    loaded = load_index(g)
    assert loaded.rebuilt
    assert "rebuilding it" in capfd.readouterr().err
    (best,) = search_identities(loaded, stranger[None], top_k=1)
    assert best[0].distance > 0.5  # the stranger is far from everyone: not a match for ALICE
    (alice,) = search_identities(loaded, ts[0].embedding[None], top_k=1)
    assert alice[0].name == "ALICE" and alice[0].distance < 1e-3
    assert not load_index(g).rebuilt  # the rebuilt index is bound and trusted again


def test_index_saved_while_the_gallery_cannot_record_it_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)
    g, _ = _gallery(tmp_path)
    load_index(g)
    with h5py.File(g.path, "r+") as f:  # the gallery's record of its index, as an older writer left it
        parts = f.attrs["digest"].decode().split(":")
        parts[-1] = "0" * 32
        f.attrs["digest"] = np.bytes_(":".join(parts).encode())
    assert load_index(g).rebuilt


def test_digest_survives_rewrites_and_check_reports(tmp_path):
    g, _ = _gallery(tmp_path)
    g.append(_templates(["CAROL"] * 1500, start=10), MODEL)  # grows: copy-on-write rewrite
    g.remove(["BOB"])
    g.compact()
    rows = g.read()
    assert rows.names.count("CAROL") == 1500 and "BOB" not in rows.names
    report = manage_gallery(g.path, check=True)
    assert report["check"] == {"templates": 1501, "verified": True, "rows_checked": 1501, "schema_version": 2}


# -- malformed fields: one line naming the file ----------------------------------------------------


def _break(path: Path, how: str) -> None:
    with h5py.File(path, "r+") as f:
        if how == "embeddings 1-D":
            del f["embeddings"]
            f["embeddings"] = np.zeros(1024 * 16, np.float16)
        elif how == "embeddings int":
            del f["embeddings"]
            f["embeddings"] = np.zeros((1024, 16), np.int32)
        elif how == "embeddings wide":
            del f["embeddings"]
            f["embeddings"] = np.zeros((1024, 17), np.float16)
        elif how == "schema text":
            f.attrs["schema_version"] = "2"
        elif how == "embedding_size float":
            f.attrs["embedding_size"] = 16.5
        elif how == "fingerprint number":
            f.attrs["fingerprint"] = 7
        elif how == "digest garbage":
            f.attrs["digest"] = np.bytes_(b"kface2:1:2:3")
        elif how == "rows disagree":
            del f["score"]
            f["score"] = np.zeros(10, np.float32)
        elif how == "text short":
            parts = f.attrs["digest"].decode().split(":")
            parts[2] = f"{10**15:016d}"
            f.attrs["digest"] = np.bytes_(":".join(parts).encode())


@pytest.mark.parametrize(
    "how",
    [
        "embeddings 1-D",
        "embeddings int",
        "embeddings wide",
        "schema text",
        "embedding_size float",
        "fingerprint number",
        "digest garbage",
        "rows disagree",
        "text short",
    ],
)
def test_malformed_fields_are_one_line(tmp_path, how):
    g, _ = _gallery(tmp_path)
    _break(g.path, how)
    with pytest.raises(InputError) as e:
        g.read()
    assert str(g.path) in str(e.value) and "\n" not in str(e.value)
    r = CliRunner().invoke(app, ["gallery", "-g", str(g.path)])
    assert r.exit_code == 2 and "Traceback" not in r.output and g.path.name in r.output


# -- schema 1 galleries: read with a warning, upgraded on request ---------------------------------


def _write_v1(path: Path, ts: list[Template], *, digest: bool, count=None) -> None:
    """A gallery as kface wrote it before schema 2 (fixed-length strings, float32, optional digest)."""
    n, cap = len(ts), 1024
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", shape=(cap, 16), dtype=np.float32)
        f.create_dataset("name", shape=(cap,), dtype="S256")
        f.create_dataset("source", shape=(cap,), dtype="S512")
        f.create_dataset("box", shape=(cap, 4), dtype=np.float32, fillvalue=np.nan)
        f.create_dataset("score", shape=(cap,), dtype=np.float32, fillvalue=np.nan)
        f.create_dataset("added", shape=(cap,), dtype=np.float64)
        f.create_dataset("content_hash", shape=(cap,), dtype="S64")
        f["embeddings"][:n] = np.stack([t.embedding for t in ts])
        f["name"][:n] = np.array([t.name.encode() for t in ts], dtype="S256")
        f["source"][:n] = np.array([t.source.encode() for t in ts], dtype="S512")
        f["added"][:n] = 1.0
        f["box"][:n] = 1.0
        f["score"][:n] = 0.9
        f["content_hash"][:n] = np.array([t.content_hash.encode() for t in ts], dtype="S64")
        f.attrs["schema_version"] = 1
        f.attrs["embedding_size"] = 16
        f.attrs["fingerprint"] = MODEL.fingerprint
        f.attrs["network"] = MODEL.network
        f.attrs["model_source"] = MODEL.source
        f.attrs["created"] = 1.0
        f.attrs["count"] = np.int64(n) if count is None else count
        f.attrs["checksum"] = np.bytes_(b"0" * 64)
        if digest:
            v1 = store._V1(Gallery(path), f)
            dn = store._row_hash_sum(v1._name_rows(f["name"][:n], f["content_hash"][:n]), 0)
            de = store._row_hash_sum(np.asarray(f["embeddings"][:n], np.float32), 0)
            f.attrs["digest"] = np.bytes_(f"{n:020d}:{dn & store._M64:016x}:{de & store._M64:016x}".encode())


def test_schema1_gallery_is_read_with_a_warning_and_upgraded(tmp_path, capfd):
    store._warned_old.clear()
    path = tmp_path / "gallery.h5"
    ts = _templates(["ALICE", "BOB", "ALICE"])
    _write_v1(path, ts, digest=False)
    g = Gallery(path)
    rows = g.read(details=True)
    assert rows.names == ["ALICE", "BOB", "ALICE"] and rows.sources[1] == ts[1].source
    assert "older format" in capfd.readouterr().err
    _check_fails(path, "no digest")  # nothing vouches for its rows
    with pytest.raises(InputError, match="gallery --upgrade"):  # writes need the current format
        g.append(_templates(["CAROL"], start=5), MODEL)
    before = path.stat().st_size
    r = CliRunner().invoke(app, ["gallery", "--upgrade", "-g", str(path)])
    assert r.exit_code == 0, r.output
    assert "from schema 1 to 2" in r.output and "no digest" in r.output and "gallery.schema1.h5" in r.output
    backup = tmp_path / "gallery.schema1.h5"
    assert backup.stat().st_size == before
    assert g.schema_version() == 2 and g.verify()["verified"]
    new = g.read(details=True)
    assert new.names == rows.names and new.sources == rows.sources and new.hashes == [t.content_hash for t in ts]
    np.testing.assert_allclose(new.embeddings, rows.embeddings, atol=2e-3)
    assert g.append(_templates(["CAROL"], start=5), MODEL).added == 1
    assert g.append(ts[:1], MODEL).added == 0  # the old content hashes still make re-enrolling a no-op
    again = manage_gallery(path, upgrade=True)["upgrade"]
    assert again["upgraded"] is False


def test_schema1_gallery_with_a_digest_is_verified_and_its_holes_closed(tmp_path):
    path = tmp_path / "gallery.h5"
    ts = _templates(["ALICE", "BOB"])
    _write_v1(path, ts, digest=True)
    assert Gallery(path).verify()["verified"]
    with h5py.File(path, "r+") as f:  # a stranger's row past the digest's rows, count bumped
        f["embeddings"][2] = _templates(["X"], start=99)[0].embedding
        f["name"][2] = b"ALICE"
        f.attrs["count"] = np.int64(3)
    with pytest.raises(InputError, match="integrity check: its row count"):
        Gallery(path).read()
    with pytest.raises(InputError, match="integrity check"):  # never signed as it is
        Gallery(path).upgrade()
    assert not (tmp_path / "gallery.schema1.h5").exists()


@pytest.mark.parametrize("count", [2.5, "2", np.array([2, 2])])
def test_schema1_count_that_is_not_an_integer_is_one_line(tmp_path, count):
    path = tmp_path / "gallery.h5"
    _write_v1(path, _templates(["ALICE", "BOB"]), digest=False, count=count)
    with pytest.raises(InputError, match="damaged") as e:
        Gallery(path).read()
    assert str(path) in str(e.value)


def test_fifo_named_as_gallery_or_index_is_never_opened(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        Gallery(fifo).read()  # would block forever in open()
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)
    g, _ = _gallery(tmp_path)
    load_index(g)
    faiss_path = index_paths(g.path)[0]
    faiss_path.unlink()
    os.mkfifo(faiss_path)  # the index swapped for a FIFO: rebuilt, not read
    loaded = load_index(g, save=False)
    assert loaded.rebuilt and loaded.names == ["ALICE", "BOB"]


@pytest.mark.parametrize("tamper", ["digest deleted", "row past the count", "fingerprint"])
def test_identify_on_a_tampered_gallery_exits_2_naming_nobody(tmp_path, tamper, mbf_model):
    """The whole command, with the model the gallery was made with: one line, exit 2, no name."""
    from kface_cli.embedding.loading import load_embedder

    model = ModelInfo.of(load_embedder(mbf_model))
    photo = render_photo(tmp_path / "photos" / "stranger.jpg", "19062421")
    g = Gallery(tmp_path / "gallery.h5")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, model.embedding_size)).astype(np.float32)
    g.append_vectors(["ALICE", "BOB"], x, model)
    stranger = load_embedder(mbf_model).embed(_aligned(photo))[0]
    with h5py.File(g.path, "r+") as f:
        if tamper == "digest deleted":
            del f.attrs["digest"]
            f["embeddings"][0] = stranger.astype(np.float16)
        elif tamper == "row past the count":
            parts = f.attrs["digest"].decode().split(":")
            f["embeddings"][2] = stranger.astype(np.float16)
            f["lengths"][2] = (5, 0)
            t = int(parts[2])
            f["text"][t : t + 5] = np.frombuffer(b"ALICE", np.uint8)
            parts[1], parts[2] = f"{3:012d}", f"{t + 5:016d}"
            f.attrs["digest"] = np.bytes_(":".join(parts).encode())
        else:
            f.attrs["fingerprint"] = "0" * 20
    r = CliRunner().invoke(
        app,
        ["identify", str(photo), "-g", str(g.path), "--model", str(mbf_model), "--landmarks", "annotation", "--json"],
    )
    assert r.exit_code == 2, r.output
    assert "gallery.h5" in r.output and "ALICE" not in r.output and "Traceback" not in r.output


def _aligned(photo: Path) -> np.ndarray:
    from kface_cli.face.imageio import decode_image
    from kface_cli.face.pipeline import faces_in_image

    return np.stack([faces_in_image(decode_image(photo.read_bytes(), photo), SidecarDetector(), path=photo)[0].crop])
