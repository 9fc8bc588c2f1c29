"""Does storing gallery embeddings in float16 change who is the best match? (issue 24)

Writes a real ``gallery.h5`` of N random unit 512-d templates (one identity each) through
:meth:`Gallery.append_vectors` (float16 on disk, as every gallery now stores them), then searches
Q queries exactly, twice: against the float32 originals, and against the stored float16 rows read
back as the gallery reader does (float32, renormalised: ``store._unit``). Queries are noisy copies
of random templates at several noise levels, down to cosines with their source where the source
is barely ahead of the best of a million strangers (the hard cases, where a rounding error could
flip the answer). Reports per level the agreement of the best-match identity (float16 vs float32),
how often the source itself was found, the largest change of the best distance, and the file's
bytes per template (against the schema 1 row size).

Memory stays small (templates are regenerated block by block from their seeds). Run by hand::

    python benchmarks/bench_gallery_fp16.py                 # 1M templates, ~1.1 GB in a temp folder
    python benchmarks/bench_gallery_fp16.py --n 100000 --queries 400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kface_cli.gallery import store  # noqa: E402
from kface_cli.gallery.store import Gallery, ModelInfo  # noqa: E402

DIM = 512
BLOCK = 65536
#: Target cosine between a query and the template it is a noisy copy of.
LEVELS = (0.8, 0.5, 0.35, 0.3, 0.25)
#: Schema 1's row: float32 embedding, 256 + 512 bytes of names and sources, box, score, time, hex hash.
SCHEMA1_ROW = DIM * 4 + 256 + 512 + 16 + 4 + 8 + 64


def block(i: int, n: int) -> np.ndarray:
    """Rows [i*BLOCK, ...) of the benchmark's templates, float32 unit vectors (regenerated from a seed)."""
    rows = min(BLOCK, n - i * BLOCK)
    x = np.random.default_rng(1000 + i).standard_normal((rows, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=400, help="Queries per noise level.")
    ap.add_argument("--folder", type=Path, default=None, help="Where to write the gallery (default: a temp folder).")
    args = ap.parse_args()
    n, q_per = args.n, args.queries
    blocks = -(-n // BLOCK)
    rng = np.random.default_rng(7)
    sources = np.sort(rng.choice(n, q_per * len(LEVELS), replace=False))
    level_of = rng.permutation(np.repeat(np.arange(len(LEVELS)), q_per))

    folder = args.folder or Path(tempfile.mkdtemp(prefix="kface-fp16-"))
    g = Gallery(folder / "gallery.h5")
    model = ModelInfo("bench-fp16", DIM, "synthetic", "")
    t0 = time.perf_counter()
    g.reserve(n, model, text_bytes=n * 8)
    src_vectors = np.zeros((len(sources), DIM), np.float32)
    for i in range(blocks):
        x = block(i, n)
        first = i * BLOCK
        g.append_vectors([f"{r:07d}" for r in range(first, first + len(x))], x, model, reserve=False)
        inside = (sources >= first) & (sources < first + len(x))
        src_vectors[inside] = x[sources[inside] - first]
    write_s = time.perf_counter() - t0
    size = g.path.stat().st_size

    # queries: noisy copies of their source at the level's cosine (noise orthogonal to the source)
    noise = rng.standard_normal((len(sources), DIM)).astype(np.float32)
    noise -= (noise * src_vectors).sum(1, keepdims=True) * src_vectors
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = np.array(LEVELS, np.float32)[level_of][:, None]
    queries = c * src_vectors + np.sqrt(1 - c**2) * noise  # unit, cos(query, source) = c

    best32 = np.full(len(queries), -np.inf, np.float32)
    row32 = np.full(len(queries), -1, np.int64)
    best16 = best32.copy()
    row16 = row32.copy()
    import h5py

    t0 = time.perf_counter()
    with h5py.File(g.path, "r") as f:
        emb = f["embeddings"]
        for i in range(blocks):
            x32 = block(i, n)
            first = i * BLOCK
            x16 = store._unit(emb[first : first + len(x32)])  # what Gallery.read returns
            for x, best, row in ((x32, best32, row32), (x16, best16, row16)):
                sims = queries @ x.T  # (Q, B)
                j = sims.argmax(1)
                s = sims[np.arange(len(queries)), j]
                better = s > best
                best[better] = s[better]
                row[better] = first + j[better]
    search_s = time.perf_counter() - t0
    assert g.read(embeddings=False).names[int(sources[0])] == f"{int(sources[0]):07d}"  # the file verifies

    per_level = []
    for k, level in enumerate(LEVELS):
        m = level_of == k
        per_level.append(
            {
                "cosine_to_source": level,
                "queries": int(m.sum()),
                "best_match_agreement_fp16_vs_fp32": float((row16[m] == row32[m]).mean()),
                "fp32_found_source": float((row32[m] == sources[m]).mean()),
                "fp16_found_source": float((row16[m] == sources[m]).mean()),
                "max_abs_best_distance_change": float(np.abs(2 * best16[m] - 2 * best32[m]).max()),
            }
        )
    report = {
        "templates": n,
        "dimension": DIM,
        "file_bytes": size,
        "bytes_per_template": round(size / n, 1),
        "schema1_bytes_per_template": SCHEMA1_ROW,
        "agreement_all": float((row16 == row32).mean()),
        "disagreements": int((row16 != row32).sum()),
        "levels": per_level,
        "write_seconds": round(write_s, 1),
        "search_seconds_both": round(search_s, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
