"""What verifying the gallery's digest on every read costs, at 1M templates (issue 9, defect 2).

Writes a real ``gallery.h5`` of N templates through :meth:`Gallery.append` (as ``kface enroll``
does), then times, with the page cache warm (median of ``--repeat`` runs each):

* the names-only read that ``kface identify`` does when the saved index is current, verified
  (names and content hashes against the digest) and plain (verification switched off);
* the full read (names + embeddings) that an index rebuild does, verified and plain;
* ``kface gallery --check`` (every row, names and embeddings).

The ratios verified/plain are the price of the check. Run by hand (it is not a test)::

    python benchmarks/bench_gallery_verify.py                  # 1M templates, ~3 GB in a temp folder
    python benchmarks/bench_gallery_verify.py --n 100000
    python benchmarks/bench_gallery_verify.py --gallery /tmp/g1m.h5   # keep it; later runs reuse it
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kface_cli.gallery.store import Gallery, ModelInfo, Template  # noqa: E402

DIM = 512
BLOCK = 65536


def write_gallery(path: Path, n: int) -> float:
    """An n-template gallery of random unit vectors, 10 templates per identity; returns seconds."""
    rng = np.random.default_rng(0)
    model = ModelInfo("bench", DIM, "synthetic", "")
    g = Gallery(path)
    t = time.perf_counter()
    g.reserve(n, model)  # one allocation of the final size, as enroll does
    for s in range(0, n, BLOCK):
        x = rng.standard_normal((min(n, s + BLOCK) - s, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        g.append(
            [
                Template(f"person{(s + i) // 10:07d}", e, f"/photos/{s + i}.jpg", f"{s + i:064x}")
                for i, e in enumerate(x)
            ],
            model,
            skip_duplicates=False,
        )
    return time.perf_counter() - t


def paired_ms(g: Gallery, repeat: int, **kwargs) -> tuple[float, float]:
    """Median ms of ``g.read(**kwargs)`` plain and verified, alternated so that load drifts hit both alike."""
    verify = Gallery._verify
    plain, verified = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        g.read(**kwargs)
        verified.append(time.perf_counter() - t)
        Gallery._verify = lambda self, f, **k: self._commit_of(f)  # the plain read: no digest check
        try:
            t = time.perf_counter()
            g.read(**kwargs)
            plain.append(time.perf_counter() - t)
        finally:
            Gallery._verify = verify
    return 1000 * statistics.median(plain), 1000 * statistics.median(verified)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="templates in the gallery")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--gallery", type=Path, default=None, help="gallery.h5 to write and keep, or to reuse when it exists"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.gallery or Path(tmp) / "gallery.h5"
        if path.exists():
            print(f"reusing {path}")
        else:
            write_s = write_gallery(path, args.n)
            print(f"wrote {path} in {write_s:.0f} s")
        g = Gallery(path)
        n = g.facts().templates
        print(f"gallery of {n:,} templates, {DIM}-d: {path.stat().st_size / 2**30:.2f} GiB")
        g.read(embeddings=True)  # warm the page cache: we time the check, not the disk

        timings = {
            "names only (identify, index current)": paired_ms(g, args.repeat, embeddings=False),
            "names + embeddings (index rebuild)": paired_ms(g, args.repeat, embeddings=True),
        }
        t = time.perf_counter()
        g.verify()
        check_ms = 1000 * (time.perf_counter() - t)

    print(f"\n{'read':40s} {'plain ms':>10s} {'verified ms':>12s} {'ratio':>7s} {'+ms':>9s}")
    for label, (plain, verified) in timings.items():
        print(f"{label:40s} {plain:10.0f} {verified:12.0f} {verified / plain:7.2f} {verified - plain:9.0f}")
    print(f"{'kface gallery --check (full)':40s} {'':10s} {check_ms:12.0f}")


if __name__ == "__main__":
    main()
