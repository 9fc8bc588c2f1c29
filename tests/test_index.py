"""The FAISS index: distances, exactness, approximate kinds, size-based choice, staleness."""

from __future__ import annotations

import numpy as np
import pytest

from kface_cli.defaults import DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_COSINE
from kface_cli.errors import InputError
from kface_cli.gallery import index as index_mod
from kface_cli.gallery.index import (
    IndexKind,
    build_index,
    cosine_to_distance,
    index_paths,
    load_index,
    rank_identities,
    resolve_kind,
    search_identities,
)
from kface_cli.gallery.schema import ModelInfo, Template, content_hash
from kface_cli.gallery.store import Gallery


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n_ids=300, per_id=6, dim=64, noise=0.04, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_ids, dim)))
    x = _unit(np.repeat(centres, per_id, axis=0) + noise * rng.standard_normal((n_ids * per_id, dim)))
    q = _unit(centres + noise * rng.standard_normal((n_ids, dim)))
    return x, q


def test_flat_distances_are_squared_l2_between_unit_vectors():
    x, q = _clustered(50, 2)
    res = build_index(x, "flat").search(q, 5)
    brute = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (Q, N)
    np.testing.assert_array_equal(res.rows[:, 0], brute.argmin(1))
    np.testing.assert_allclose(res.distances, np.take_along_axis(brute, res.rows, 1), atol=1e-5)
    assert np.all(np.diff(res.distances, axis=1) >= -1e-6)


def test_default_threshold_is_the_tutorials_cosine_quarter():
    assert cosine_to_distance(DEFAULT_THRESHOLD_COSINE) == pytest.approx(DEFAULT_THRESHOLD)
    assert DEFAULT_THRESHOLD_COSINE == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_agree_with_exact_search(kind):
    x, q = _clustered()
    identity = np.repeat(np.arange(300), 6)  # row -> identity, as _clustered lays them out
    exact = build_index(x, "flat").search(q, 1)
    approx = build_index(x, kind).search(q, 1)
    agree = (identity[approx.rows[:, 0]] == identity[exact.rows[:, 0]]).mean()
    assert agree >= 0.99, f"{kind} top-1 identity agreement {agree:.3f}"
    # reported distances are those of the returned rows, to within the 8-bit codes' error
    true = ((q - x[approx.rows[:, 0]]) ** 2).sum(1)
    np.testing.assert_allclose(approx.distances[:, 0], true, atol=0.01)
    assert np.all(approx.distances[:, 0] >= exact.distances[:, 0] - 0.01)


def test_auto_picks_by_size(monkeypatch):
    assert resolve_kind("auto", 10) is IndexKind.FLAT
    assert resolve_kind("auto", index_mod.AUTO_FLAT_MAX + 1) is IndexKind.IVF
    assert resolve_kind("HNSW", 10) is IndexKind.HNSW
    with pytest.raises(InputError, match="flat, ivf, hnsw|auto, flat"):
        IndexKind.parse("annoy", "index kind")
    monkeypatch.setattr(index_mod, "AUTO_FLAT_MAX", 100)
    x, _ = _clustered(40, 6)
    assert build_index(x, "auto").kind is IndexKind.IVF


def test_rank_identities_merges_templates_of_one_person():
    x, q = _clustered(30, 4)
    names = [f"id{i // 4}" for i in range(len(x))]
    loaded = index_mod.LoadedIndex(build_index(x, "flat"), names, rebuilt=True)
    ranked = search_identities(loaded, q[:5], top_k=3, templates_per_identity=4)
    for i, cands in enumerate(ranked):
        assert [c.name for c in cands][0] == f"id{i}"
        assert len({c.name for c in cands}) == 3
        assert [c.distance for c in cands] == sorted(c.distance for c in cands)
    empty = rank_identities(index_mod.SearchResult(np.array([[-1, -1]]), np.array([[np.inf, np.inf]])), names, 3)
    assert empty == [[]]


def _gallery(tmp_path, n=20, dim=32):
    g = Gallery(tmp_path / "gallery.h5")
    model = ModelInfo("a" * 20, dim)
    rng = np.random.default_rng(1)
    emb = _unit(rng.standard_normal((n, dim)))
    g.append([Template(f"p{i % 5}", e, f"s{i}", content_hash(f"{i}".encode())) for i, e in enumerate(emb)], model)
    return g, model, emb


def test_index_is_saved_reused_and_rebuilt_when_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)  # FAISS and a saved index, as for large galleries
    g, model, emb = _gallery(tmp_path)
    first = load_index(g)
    assert first.rebuilt and all(p.is_file() for p in index_paths(g.path))
    again = load_index(g)
    assert not again.rebuilt and again.names == first.names
    # the gallery changes: count and checksum no longer match
    g.append([Template("new", emb[0], "x", content_hash(b"new"))], model)
    stale = load_index(g)
    assert stale.rebuilt and len(stale.index) == 21
    assert stale.index.search(emb[:1], 1).rows[0, 0] in (0, 20)
    # same count, different content (remove one, add another): the checksum catches it
    g.remove(["new"])
    g.append([Template("other", emb[1], "y", content_hash(b"other"))], model)
    swapped = load_index(g)
    assert swapped.rebuilt and swapped.names[-1] == "other"
    # a damaged index file is rebuilt, not trusted
    index_paths(g.path)[0].write_bytes(b"garbage")
    assert load_index(g).rebuilt
    # another kind asked for: rebuilt as that kind; auto keeps it afterwards
    assert load_index(g, "hnsw").index.kind is IndexKind.HNSW
    kept = load_index(g, "auto")
    assert not kept.rebuilt and kept.index.kind is IndexKind.HNSW


def test_small_auto_galleries_are_searched_exactly_in_numpy_with_no_index_file(tmp_path):
    g, model, emb = _gallery(tmp_path)
    small = load_index(g)
    assert isinstance(small.index.index, index_mod.NumpyFlatIP) and small.index.kind is IndexKind.FLAT
    assert not any(p.exists() for p in index_paths(g.path))  # nothing built or saved
    faiss_flat = build_index(g.read().embeddings, "flat")  # the same (float16-stored) vectors
    queries = _unit(np.random.default_rng(7).standard_normal((5, emb.shape[1])))
    a, b = small.index.search(queries, 4), faiss_flat.search(queries, 4)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.distances, b.distances, atol=1e-5)
    # a kind asked for explicitly still builds (and saves) the FAISS index
    assert load_index(g, "flat").rebuilt and index_paths(g.path)[0].is_file()


def test_without_a_saved_index_the_gallery_is_read_once(tmp_path, monkeypatch):
    """No saved index: the names and embeddings come from one verified read, not a names-only read first."""
    g, model, emb = _gallery(tmp_path)
    reads = []
    original = Gallery.read
    monkeypatch.setattr(Gallery, "read", lambda self, **kw: reads.append(kw) or original(self, **kw))
    small = load_index(g)
    assert reads == [{"embeddings": True}] and small.names == g.read(embeddings=False).names
    reads.clear()
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)
    assert load_index(g).rebuilt and reads == [{"embeddings": True}]  # built and saved from that one read
    reads.clear()
    assert not load_index(g).rebuilt and reads == [{"embeddings": False}]  # the saved index: names only


def _saved_index(tmp_path, monkeypatch):
    """A gallery with a saved FAISS index, its digest cache in tmp_path, and a count of full hashes."""
    monkeypatch.setattr(index_mod, "NUMPY_EXACT_MAX", 0)
    monkeypatch.setenv("KFACE_CACHE", str(tmp_path / "cache"))
    g, model, emb = _gallery(tmp_path)
    assert load_index(g).rebuilt
    hashed = []  # full hashes of the saved index (not of the temporary file a rebuild writes)
    original = index_mod._file_sha256
    saved = index_paths(g.path)[0]
    monkeypatch.setattr(index_mod, "_file_sha256", lambda p: (p == saved and hashed.append(p)) or original(p))
    return g, hashed


def _later(monkeypatch, seconds: float = 10.0) -> None:
    """Hashing happens ``seconds`` after the index file's last change (as on any later run)."""
    now = index_mod.time.time_ns
    monkeypatch.setattr(index_mod.time, "time_ns", lambda: now() + int(seconds * 1e9))


def test_a_saved_index_is_hashed_once_per_version(tmp_path, monkeypatch):
    g, hashed = _saved_index(tmp_path, monkeypatch)
    _later(monkeypatch)
    assert not load_index(g).rebuilt and len(hashed) == 1  # hashed, and remembered
    assert not load_index(g).rebuilt and not load_index(g).rebuilt and len(hashed) == 1
    records = list((tmp_path / "cache" / "index-digests").iterdir())
    assert len(records) == 1 and records[0].stat().st_mode & 0o077 == 0


def test_a_file_changed_just_before_it_was_hashed_is_not_remembered(tmp_path, monkeypatch):
    g, hashed = _saved_index(tmp_path, monkeypatch)  # the index was written just now: not settled
    for _ in range(3):
        assert not load_index(g).rebuilt
    assert len(hashed) == 3 and not (tmp_path / "cache" / "index-digests").exists()


def test_an_edited_index_is_caught_even_with_its_times_put_back(tmp_path, monkeypatch):
    import os
    import time

    g, hashed = _saved_index(tmp_path, monkeypatch)
    _later(monkeypatch)
    assert not load_index(g).rebuilt and len(hashed) == 1
    path = index_paths(g.path)[0]
    before = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp tick: the edit gets a later ctime
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed in place (same inode)
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # modification time put back
    assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
    assert load_index(g).rebuilt and len(hashed) == 2  # hashed again: the change is caught
    # the same again with a file put in its place: another inode
    replaced = path.with_name("other.faiss")
    replaced.write_bytes(path.read_bytes()[:-1] + b"\0")
    os.replace(replaced, path)
    assert load_index(g).rebuilt


def test_a_record_others_may_write_is_not_trusted(tmp_path, monkeypatch):
    g, hashed = _saved_index(tmp_path, monkeypatch)
    _later(monkeypatch)
    load_index(g)
    (record,) = (tmp_path / "cache" / "index-digests").iterdir()
    record.chmod(0o666)
    assert not load_index(g).rebuilt and len(hashed) == 2  # ignored (and replaced by a private one)
    assert not load_index(g).rebuilt and len(hashed) == 2
    record.write_text('{"file": "x", "sha256": "' + "0" * 64 + '"}')  # a record for another file version
    assert not load_index(g).rebuilt and len(hashed) == 3
