"""Gallery search speed: kface's index against exact FAISS, a numpy matmul and the tutorial's loop.

Synthetic, identity-structured 512-d unit embeddings: ``N / per_id`` identities, ``per_id`` noisy
copies of each identity's centre (cosine to the centre ~0.75, like real ArcFace templates), and
queries that are fresh noisy copies of enrolled identities. For each gallery size it reports:

* median single-query latency (one query at a time, as ``kface identify`` on one photo) and the
  throughput of a batch of queries, for: kface's ``auto`` index, exact FAISS (``IndexFlatIP``), a
  numpy matmul over the gallery, and the tutorial's Python loop over the gallery (run on a slice
  and extrapolated when the gallery is large);
* top-1 agreement of the approximate index with exact search: same identity (what identify
  reports) and same template row (near-ties between one person's templates make this lower);
* index build time, and the disk/RAM a gallery of that size costs.

Run by hand (it is not a test)::

    python benchmarks/bench_search.py                 # 10k and 100k
    python benchmarks/bench_search.py --sizes 1000000 # the 1M case (~6 GB RAM, a few minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kface_cli.gallery import store  # noqa: E402
from kface_cli.gallery.index import IndexKind, build_index, resolve_kind  # noqa: E402

DIM = 512
NOISE = 0.039  # per-dimension sigma: |noise| ~ 0.88, cosine(template, centre) ~ 0.75


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_gallery(n: int, per_id: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings (n, D), identity of each row (n,), identity centres (n_ids, D)), built in blocks."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_id)
    centres = unit(rng.standard_normal((n_ids, DIM), dtype=np.float32))
    ids = np.arange(n) % n_ids
    x = np.empty((n, DIM), dtype=np.float32)
    block = 65536
    for s in range(0, n, block):
        e = min(n, s + block)
        x[s:e] = centres[ids[s:e]] + NOISE * rng.standard_normal((e - s, DIM), dtype=np.float32)
        unit(x[s:e])
    return x, ids, centres


def make_queries(centres: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(centres), q)
    return unit(centres[pick] + NOISE * rng.standard_normal((q, DIM), dtype=np.float32))


CPU_TIMES: list[float] = []  # the thread CPU time of the last median_ms call (ms)


def median_ms(fn, queries: np.ndarray) -> float:
    """Median wall-clock latency of one query at a time, FAISS on one thread (a single query
    uses one core). The median thread CPU time is kept in CPU_TIMES: on a busy machine it shows
    what the query costs when it has the core to itself."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times, cpu = [], []
    try:
        for q in queries:
            c = time.thread_time()
            t = time.perf_counter()
            fn(q[None])
            times.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
    finally:
        faiss.omp_set_num_threads(threads)
    CPU_TIMES[:] = [1000 * statistics.median(cpu)]
    return 1000 * statistics.median(times)


def tutorial_loop(gallery: list[np.ndarray], query: np.ndarray) -> int:
    """The tutorial's way: a Python loop computing each distance and keeping the best."""
    best, best_d = -1, float("inf")
    for i, emb in enumerate(gallery):
        d = float(np.sum((emb - query) ** 2))
        if d < best_d:
            best, best_d = i, d
    return best


def gallery_cost(n: int) -> tuple[int, int]:
    """Bytes on disk (gallery.h5 rows) and in RAM for search (index + names) for the auto index."""
    # schema 2: float16 embedding, name/source lengths, box, score, time, SHA-256, and the text of
    # name + source (here ~13 + ~36 bytes: "person0001234", "/photos/person0001234/1234.jpg")
    row = DIM * 2 + 4 + 16 + 4 + 8 + store.HASH_BYTES + 13 + 36
    vector = DIM * 4 if resolve_kind("auto", n) is IndexKind.FLAT else DIM + 8  # float32, or 8-bit codes + id
    ram = vector + 60  # + a short Python str per name
    return row * n, ram * n


_LOAD_IN_FRESH_PROCESS = """
import sys, time
from kface_cli.gallery.index import load_index
from kface_cli.gallery.store import Gallery
t = time.perf_counter()
loaded = load_index(Gallery(sys.argv[1]))
# VmHWM: this process's peak RSS (ru_maxrss would include the parent's, inherited across fork)
hwm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(f"{time.perf_counter() - t:.2f} {hwm_kib / 2**20:.2f} {loaded.rebuilt}")
"""


def measure_store(x: np.ndarray, ids: np.ndarray, folder: Path, auto_index) -> None:
    """Write a real gallery.h5 and save its index, then time loading both in a fresh process.

    ``auto_index`` is the index the table measured (what ``load_index`` builds for this gallery:
    same data, same kind, same seed); it is saved with the gallery's checksum instead of being
    built a second time.
    """
    import subprocess

    from kface_cli.gallery.index import SearchIndex, index_paths, save_index
    from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash

    g = Gallery(folder / "gallery.h5")
    model = ModelInfo("bench", DIM, "synthetic", "")
    t = time.perf_counter()
    g.reserve(len(x), model)  # as enroll does: one allocation of the final size
    block = 65536
    for s in range(0, len(x), block):
        g.append(
            [
                Template(
                    f"person{ids[i]:07d}", x[i], f"/photos/person{ids[i]:07d}/{i}.jpg", content_hash(str(i).encode())
                )
                for i in range(s, min(len(x), s + block))
            ],
            model,
        )
    write_s = time.perf_counter() - t
    save_index(SearchIndex(auto_index.index, auto_index.kind, len(x), g.facts().checksum, auto_index.params), g)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(g.path)],
        capture_output=True,
        text=True,
        env={**os.environ, "KFACE_NO_PROGRESS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    load_s, rss_gib, rebuilt = out.stdout.split()
    idx_file = index_paths(g.path)[0]
    print(
        f"real files: gallery.h5 {g.path.stat().st_size / 2**30:.2f} GiB (written in {write_s:.0f} s, capacity {g.facts().capacity:,}), "
        f"{idx_file.name} {idx_file.stat().st_size / 2**30:.2f} GiB; "
        f"a fresh identify process loads names + index in {load_s} s, peak RSS {rss_gib} GiB (rebuilt: {rebuilt})"
    )


def run(n: int, per_id: int, n_queries: int, loop_cap: int, hnsw: bool, store_dir: Path | None = None) -> None:
    import faiss

    print(
        f"\n== gallery of {n:,} templates ({n // per_id:,} identities x {per_id}), {DIM}-d, faiss threads {faiss.omp_get_max_threads()} =="
    )
    t = time.perf_counter()
    x, ids, centres = make_gallery(n, per_id)
    queries = make_queries(centres, n_queries)
    print(f"data: {time.perf_counter() - t:.1f} s")

    exact = build_index(x, "flat")
    auto_index = exact
    t = time.perf_counter()
    exact_batch = exact.search(queries, 1)
    exact_batch_s = time.perf_counter() - t
    exact_ms = median_ms(lambda q: exact.search(q, 1), queries[:100])
    gt = exact_batch.rows[:, 0]
    rows = [("exact FAISS (IndexFlatIP)", exact_ms, CPU_TIMES[0], n_queries / exact_batch_s, 1.0, 1.0, 0.0)]

    kinds = [resolve_kind("auto", n)] + ([IndexKind.HNSW] if hnsw else [])
    if IndexKind.IVF not in kinds:
        kinds.append(IndexKind.IVF)
    for kind in kinds:
        if kind is IndexKind.FLAT:
            continue
        t = time.perf_counter()
        idx = build_index(x, kind)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        res = idx.search(queries, 1)
        batch_s = time.perf_counter() - t
        ms = median_ms(lambda q, idx=idx: idx.search(q, 1), queries[:300])
        agree = float((res.rows[:, 0] == gt).mean())
        agree_id = float((ids[res.rows[:, 0]] == ids[gt]).mean())
        params = ", ".join(f"{k} {v}" for k, v in idx.params.items() if k != "trained_on")
        label = f"kface {kind.value} ({params})" + (" [auto]" if kind is resolve_kind("auto", n) else "")
        rows.append((label, ms, CPU_TIMES[0], n_queries / batch_s, agree_id, agree, build_s))
        if kind is resolve_kind("auto", n):
            auto_index = idx
        del idx

    mm_ms = median_ms(lambda q: int(np.argmax(x @ q[0])), queries[:30])
    mm_cpu = CPU_TIMES[0]
    t = time.perf_counter()
    for s in range(0, n_queries, 256):
        np.argmax(queries[s : s + 256] @ x.T, axis=1)
    mm_batch = n_queries / (time.perf_counter() - t)
    rows.append(("numpy matmul (x @ q)", mm_ms, mm_cpu, mm_batch, 1.0, 1.0, 0.0))

    m = min(n, loop_cap)
    sub = list(x[:m])
    t = time.perf_counter()
    for q in queries[:3]:
        tutorial_loop(sub, q)
    loop_ms = 1000 * (time.perf_counter() - t) / 3 * (n / m)
    note = "" if m == n else f" (run on {m:,}, extrapolated x{n / m:.0f})"
    rows.append((f"tutorial Python loop{note}", loop_ms, float("nan"), 1000 / loop_ms, 1.0, 1.0, 0.0))

    base = exact_ms
    print(
        f"{'method':48s} {'median 1 query':>15s} {'(CPU time)':>11s} {'vs exact':>9s} {'batch q/s':>10s} {'top-1 identity':>15s} {'top-1 row':>10s} {'build':>7s}"
    )
    for label, ms, cpu_ms, qps, agree_id, agree, build_s in rows:
        print(
            f"{label:48s} {ms:12.3f} ms {cpu_ms:8.3f} ms {base / ms:8.2f}x {qps:10,.0f} {agree_id:15.2%} {agree:10.2%} {build_s:6.1f}s"
        )
    print(
        "(top-1 identity/row: how often the approximate index's best match is the same identity / the same template "
        "as exact search; rows of one identity are near-ties, identification reports the identity)"
    )
    disk, ram = gallery_cost(n)
    if store_dir is not None:
        import tempfile

        with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
            measure_store(x, ids, Path(tmp), auto_index)
    print(
        f"cost: gallery.h5 {disk / 2**30:.2f} GiB on disk ({disk // n} B/template); "
        f"search RAM ~{ram / 2**30:.2f} GiB ({resolve_kind('auto', n).value} index + names); float32 embeddings alone {n * DIM * 4 / 2**30:.2f} GiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--per-id", type=int, default=10, help="templates per identity")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--loop-cap", type=int, default=20_000, help="run the Python loop on at most this many templates")
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW (slow to build at 1M on few cores)")
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a real gallery.h5 + index in DIR and measure disk, load time and RAM",
    )
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    for n in args.sizes:
        run(n, args.per_id, args.queries, args.loop_cap, args.hnsw, args.store)


if __name__ == "__main__":
    main()
