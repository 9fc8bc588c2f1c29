"""Gallery integrity: bytes changed in place in the file are refused, on read and by ``--check``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kface_cli.errors import InputError, KFaceError
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


def test_name_changed_in_place_is_refused(tmp_path):
    g, _ = _gallery(tmp_path)
    _flip_in_file(g.path, b"ALICE\x00\x00", b"MALLO\x00\x00")  # the name column, not the source path
    with pytest.raises(InputError, match="integrity check: names changed"):
        g.read(embeddings=False)
    with pytest.raises(KFaceError, match="names"):
        manage_gallery(g.path, check=True)


def test_embedding_changed_in_place_is_refused(tmp_path):
    g, ts = _gallery(tmp_path)
    raw = np.asarray(ts[1].embedding, dtype="<f4").tobytes()
    changed = bytearray(raw)
    changed[5] ^= 0x01
    _flip_in_file(g.path, raw, bytes(changed))
    assert g.read(embeddings=False).names == ["ALICE", "BOB"]  # names alone still verify
    with pytest.raises(InputError, match="integrity check: embeddings changed"):
        g.read(embeddings=True)
    with pytest.raises(InputError, match="embeddings"):
        manage_gallery(g.path, rebuild_index=True)  # no index is built from changed embeddings


def test_digest_survives_rewrites_and_check_reports(tmp_path):
    g, _ = _gallery(tmp_path)
    g.append(_templates(["CAROL"] * 1500, start=10), MODEL)  # grows: copy-on-write rewrite
    g.remove(["BOB"])
    g.compact()
    rows = g.read()
    assert rows.names.count("CAROL") == 1500 and "BOB" not in rows.names
    report = manage_gallery(g.path, check=True)
    assert report["check"] == {"templates": 1501, "verified": True, "rows_checked": 1501}
