"""Bulk enrolment at 100,000 templates: size per template, speed, and a planted real face still named (issue 24).

1. A model: a MobileFaceNet with 512-d output and seeded random weights (any model works: the
   check is that the gallery keeps what the model says; no trained weights are needed).
2. ``kface embed PHOTO --out real.h5`` embeds one real photo (whole CLI).
3. ``big.h5``: N random unit 512-d embeddings (names ``p000000``...) plus the real one (name
   ``PLANTED``) in the middle, with ``real.h5``'s model attribute: the layout ``kface embed`` writes.
4. Side by side, in one run: writing the same array and names with plain h5py (the floor: one
   dataset write, no checks), then ``kface enroll --embeddings big.h5`` (whole process: start-up,
   validation, normalising, float16, content hashes, digest, committed batches with fsync; the
   search index build is reported apart).
5. ``kface identify PHOTO`` against the new gallery must name ``PLANTED``.

Prints JSON. Run by hand (needs a photo with a face)::

    python benchmarks/bench_bulk_enroll.py --photo /path/to/face.jpg [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 512


def kface(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("kface")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "kface_cli", *args]
    env = {**os.environ, "KFACE_NO_PROGRESS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--folder", type=Path, default=None)
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="kface-bulk-"))
    folder.mkdir(parents=True, exist_ok=True)

    import h5py
    import torch

    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    model = folder / "backbone.pth"
    torch.save(get_backbone("mbf", embedding_size=DIM).state_dict(), model)
    real = folder / "real.h5"
    r = kface("embed", str(args.photo), "--out", str(real), "--model", str(model), "--network", "mbf")
    assert r.returncode == 0, r.stderr
    with h5py.File(real) as f:
        planted = np.asarray(f["embeddings"][0], np.float32)
        model_attr = f.attrs["model"]
        schema = f.attrs["schema"]

    n = args.n
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n + 1, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    at = n // 2
    x[at] = planted
    names = [f"p{i:06d}" for i in range(n + 1)]
    names[at] = "PLANTED"
    big = folder / "big.h5"
    with h5py.File(big, "w") as f:
        f.create_dataset("embeddings", data=x)
        f.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
        f.attrs["schema"] = schema
        f.attrs["model"] = model_attr

    # side by side: the plain h5py write of the same data, then the enrolment (whole process)
    raw = folder / "raw.h5"
    t0 = time.perf_counter()
    with h5py.File(raw, "w") as f:
        f.create_dataset("embeddings", data=x)
        f.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
    raw_s = time.perf_counter() - t0
    gallery = folder / "gallery.h5"
    t0 = time.perf_counter()
    r = kface("enroll", "--embeddings", str(big), "-g", str(gallery), "--json")
    enroll_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    t0 = time.perf_counter()
    raw2 = folder / "raw2.h5"
    with h5py.File(raw2, "w") as f:  # again after, to see the machine's drift
        f.create_dataset("embeddings", data=x)
        f.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
    raw2_s = time.perf_counter() - t0

    ident = kface("identify", str(args.photo), "-g", str(gallery), "--model", str(model), "--json")
    assert ident.returncode == 0, ident.stderr
    faces = [face for image in json.loads(ident.stdout)["images"] for face in image["faces"]]
    size = gallery.stat().st_size
    print(
        json.dumps(
            {
                "templates": result["templates_in_gallery"],
                "gallery_bytes": size,
                "bytes_per_template": round(size / result["templates_in_gallery"], 1),
                "kib_per_template": round(size / result["templates_in_gallery"] / 1024, 3),
                "raw_h5py_write_seconds": [round(raw_s, 2), round(raw2_s, 2)],
                "enroll_whole_process_seconds": round(enroll_s, 2),
                "enroll_rows_seconds": result["seconds"],
                "enroll_index_seconds": result["index_seconds"],
                "ratio_enroll_rows_to_raw_write": round(result["seconds"] / ((raw_s + raw2_s) / 2), 2),
                "ratio_enroll_whole_process_to_raw_write": round(enroll_s / ((raw_s + raw2_s) / 2), 2),
                "identify_named": [face.get("name") for face in faces],
                "identify_distance": [face.get("distance") for face in faces],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
