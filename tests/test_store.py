"""The HDF5 gallery store: schema, unicode, duplicates, model checks, damage, crashes, concurrency."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from kface_cli.errors import InputError, ModelMismatchError
from kface_cli.gallery.store import SCHEMA_VERSION, Gallery, ModelInfo, Template, content_hash

MODEL = ModelInfo("f" * 20, 16, "mbf", "/runs/a")
REPO = Path(__file__).resolve().parents[1]


def _templates(names, start=0, dim=16, seed=0):
    rng = np.random.default_rng(seed + start)
    out = []
    for i, name in enumerate(names, start):
        e = rng.standard_normal(dim).astype(np.float32)
        out.append(
            Template(
                name,
                e / np.linalg.norm(e),
                f"/photos/{name}/{i}.jpg",
                content_hash(f"{name}-{i}".encode()),
                (1.0, 2.0, 3.0, 4.0),
                0.9,
            )
        )
    return out


def test_append_and_read_round_trip_with_korean_names(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    ts = _templates(["김철수", "이영희", "Zoë"])
    assert g.append(ts, MODEL).added == 3
    rows = g.read(details=True)
    assert rows.names == ["김철수", "이영희", "Zoë"]
    _close(rows.embeddings, np.stack([t.embedding for t in ts]))
    assert rows.sources == [t.source for t in ts]
    assert rows.hashes == [t.content_hash for t in ts]
    np.testing.assert_allclose(rows.boxes[0], [1, 2, 3, 4])
    assert np.all(rows.added > 0)
    facts = g.facts()
    assert (facts.templates, facts.identities, facts.embedding_size, facts.fingerprint, facts.schema_version) == (
        3,
        3,
        16,
        MODEL.fingerprint,
        SCHEMA_VERSION,
    )
    with h5py.File(g.path) as f:  # a plain HDF5 reader sees the same
        assert bytes(f["text"][: f["lengths"][0][0]]).decode("utf-8") == "김철수"
        assert f["embeddings"].dtype == np.float16
        assert f.attrs["digest"].decode().split(":")[1] == "000000000003"


def _close(a, b):
    """Stored float16, read back as float32 unit vectors: equal to within float16's precision."""
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


def test_file_is_private(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    g.append(_templates(["a"]), MODEL)
    assert stat.S_IMODE(os.stat(g.path).st_mode) == 0o600
    g.remove(["a"])  # rewritten files too
    assert stat.S_IMODE(os.stat(g.path).st_mode) == 0o600


def test_duplicate_content_hash_is_skipped(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    ts = _templates(["a", "b"])
    g.append(ts, MODEL)
    again = g.append(ts + _templates(["c"], start=5), MODEL)
    assert again.added == 1 and sorted(again.duplicates) == sorted(t.source for t in ts)
    assert g.identities() == {"a": 1, "b": 1, "c": 1}


def test_growth_keeps_rows_and_checksum_changes(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    first = _templates([f"p{i % 7}" for i in range(1000)])
    g.append(first, MODEL)
    before = g.facts()
    second = _templates([f"q{i % 5}" for i in range(1500)], start=1000)
    g.append(second, MODEL)
    after = g.facts()
    assert after.templates == 2500 and after.capacity >= 2500 and after.capacity > before.capacity
    assert after.checksum != before.checksum
    rows = g.read()
    _close(rows.embeddings, np.stack([t.embedding for t in first + second]))
    g.reserve(5000, MODEL)  # one rewrite to the size asked for, rows kept
    assert g.facts().capacity == 5120 and g.facts().checksum == after.checksum
    np.testing.assert_array_equal(g.read().embeddings, rows.embeddings)


def test_remove_rewrites_without_the_person(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    ts = _templates(["a", "b", "a", "c"])
    g.append(ts, MODEL)
    assert g.remove(["a"]) == 2
    rows = g.read()
    assert rows.names == ["b", "c"]
    _close(rows.embeddings, np.stack([ts[1].embedding, ts[3].embedding]))
    assert g.remove(["nobody"]) == 0


def test_replace_swaps_old_rows_for_new_in_one_rewrite(tmp_path, monkeypatch):
    g = Gallery(tmp_path / "gallery.h5")
    ts = _templates(["a", "b", "a", "c"])
    g.append(ts, MODEL)
    new = _templates(["a"] * 3, start=10)
    renames = []
    from kface_cli import atomic

    real_replace = atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda *a: renames.append(a) or real_replace(*a))
    assert g.replace(["a"], new, MODEL) == 2
    assert len(renames) == 1  # one atomic rename: the old rows and the new ones change places together
    rows = g.read(details=True)
    assert rows.names == ["b", "c", "a", "a", "a"]
    np.testing.assert_allclose(rows.embeddings[2:], np.stack([t.embedding for t in new]), atol=1e-3)  # float16
    assert g.verify()["verified"] and g.facts().templates == 5
    g.append(_templates(["d"], start=20), MODEL)  # the chain goes on after a replace
    assert g.verify()["verified"] and g.identities() == {"a": 3, "b": 1, "c": 1, "d": 1}
    with pytest.raises(ModelMismatchError):
        g.replace(["a"], _templates(["a"], start=30), ModelInfo("0" * 20, 16, "r50", "/runs/b"))
    fresh = Gallery(tmp_path / "new.h5")
    assert fresh.replace(["x"], _templates(["x"]), MODEL) == 0 and fresh.identities() == {"x": 1}


def test_other_model_is_refused(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    g.append(_templates(["a"]), MODEL)
    other = ModelInfo("0" * 20, 16, "r50", "/runs/b")
    with pytest.raises(ModelMismatchError, match="another model") as e:
        g.append(_templates(["b"], start=3), other)
    assert "r50" in str(e.value) and "mbf" in str(e.value)
    assert g.facts().templates == 1


def test_missing_and_damaged_galleries_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="gallery not found"):
        Gallery(tmp_path / "none.h5").facts()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(InputError, match="not a readable HDF5"):
        Gallery(junk).read()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match="not a kface gallery"):
        Gallery(foreign).facts()
    g = Gallery(tmp_path / "gallery.h5")
    g.append(_templates(["a"]), MODEL)
    data = bytearray(g.path.read_bytes())
    data[:64] = b"\0" * 64  # superblock gone
    g.path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot open gallery"):
        g.read()


def test_name_too_long_is_a_clear_error(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    with pytest.raises(InputError, match="too long"):
        g.append(_templates(["김" * 200]), MODEL)


# -- real processes: kill -9 in the middle of writes, and two writers at once -----------------

_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from kface_cli.gallery import store
    from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash
    path, tag, batches, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hook, kill_batch = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else ("", 0)
    batch, held = -1, False

    def dies_at(fn, when):  # SIGKILL this process at a chosen moment of an append
        def hooked(*args):
            if batch >= kill_batch and when(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args)
        return hooked

    def hold(p):  # inside the first append, lock held, rows half written: wait for the test's go
        global held
        if not held:
            held = True
            print("inside", flush=True)
            sys.stdin.readline()
        return real_fsync(p)

    real_fsync = store._fsync_file
    if hook == "hold":
        store._fsync_file = hold
    elif hook == "rows":  # a batch's rows written, not yet committed (the fsync before the commit)
        store._fsync_file = dies_at(store._fsync_file, lambda p: Path(p) == Path(path))
    elif hook == "growth":  # a grown copy of the file written, not yet renamed over the gallery
        store._fsync_file = dies_at(store._fsync_file, lambda p: Path(p) != Path(path))
    model = ModelInfo("f" * 20, 64, "mbf", "x")
    rng = np.random.default_rng(sum(map(ord, tag)))
    for batch in range(batches):
        emb = rng.standard_normal((rows, 64)).astype(np.float32)
        ts = [Template(f"{tag}-{batch}", e, f"{tag}/{batch}/{i}", content_hash(f"{tag}-{batch}-{i}".encode())) for i, e in enumerate(emb)]
        Gallery(path).append(ts, model)
        print(batch, flush=True)
    """
)


def _expected(tag: str, batches: int, rows: int) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, tag)))
    return [rng.standard_normal((rows, 64)).astype(np.float32) for _ in range(batches)]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _spawn(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KFACE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "uncommitted"),
    [("rows", 0), ("growth", 0)],  # batches committed after the last one the writer printed
)
def test_sigkill_mid_append_leaves_every_committed_batch(tmp_path, kill_at, uncommitted):
    """A writer killed inside an append (hooks pick the moment): every committed batch survives, no partial one."""
    path = tmp_path / "gallery.h5"
    rows = 3000  # ~0.8 MB per batch; the file grows every batch or two
    done = 0
    for round_ in range(2):  # the second writer appends to the file the first one left
        tag = f"r{round_}"
        proc = _spawn(_WRITER, path, tag, 20, rows, kill_at, 2)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"the hook did not fire: {err}"
        printed = len(out.split())
        assert printed >= 2
        g = Gallery(path)
        rows_read = g.read()  # opens cleanly
        n = len(rows_read) - done
        assert n == (printed + uncommitted) * rows, f"{n} rows after {printed} printed batches"
        _close(rows_read.embeddings[done:], _unit(np.concatenate(_expected(tag, n // rows, rows))))
        assert rows_read.names[done:] == [f"{tag}-{b}" for b in range(n // rows) for _ in range(rows)]
        assert g.verify()["verified"]
        done += n
    # and the file still takes appends
    assert Gallery(path).append(_templates(["after"], dim=64), ModelInfo("f" * 20, 64, "mbf", "x")).added == 1


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path):
    """B starts while A is inside an append (a hook holds A there): B waits for the lock, nothing is lost."""
    path = tmp_path / "gallery.h5"
    batches, rows = 12, 200
    a = _spawn(_WRITER, path, "A", batches, rows, "hold", 0)
    assert a.stdout.readline().strip() == "inside"
    b = _spawn(_WRITER, path, "B", batches, rows)
    try:
        assert any("waiting for another kface process" in line for line in b.stderr), "B did not wait for A"
    finally:
        a.stdin.write("go\n")
        a.stdin.flush()
    for p in (a, b):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows_read = Gallery(path).read()
    assert len(rows_read) == 2 * batches * rows
    for tag in ("A", "B"):
        mine = [i for i, n in enumerate(rows_read.names) if n.startswith(tag + "-")]
        _close(rows_read.embeddings[mine], _unit(np.concatenate(_expected(tag, batches, rows))))
