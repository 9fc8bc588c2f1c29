"""`kface embed --aligned` against a bare ONNX Runtime loop over the same crops, whole process.

    python benchmarks/bench_embed_aligned.py                       # 600 crops, random-weight mbf, 3 rounds
    python benchmarks/bench_embed_aligned.py --model demo.onnx --crops WS/faces/Low --rounds 5

Both arms are fresh processes, as from a shell, alternating (bare, kface, bare, kface, ...), so a
change in the machine's load hits both alike; each prints nothing but writes its ``.npy``.

* **bare**: the shortest script that does the job: import numpy, OpenCV and ONNX Runtime, open
  the model with default session options, then per batch of 64 read the JPEGs, BGR -> RGB,
  (x - 127.5) / 127.5, NCHW, run, L2-normalise; ``np.save``. No checks, no names file.
* **kface**: ``kface embed CROPS --aligned --model M --out OUT.npy`` with its defaults.

The ratio printed is bare seconds / kface seconds (the median of the per-round ratios): 1.0 means
kface costs nothing over the runtime. The embeddings of both are compared (cosine >= 0.9999).
Goal (issue 24): >= 0.9 (done when >= 0.85 on 600 crops).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL = 0.9

BARE = r"""
import sys
from pathlib import Path
import cv2
import numpy as np
import onnxruntime as ort

folder, model, out = sys.argv[1:4]
files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
rows = []
for i in range(0, len(files), 64):
    faces = np.stack([cv2.imread(str(f)) for f in files[i : i + 64]])  # (B, 112, 112, 3) BGR
    x = ((faces[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    emb = session.run(None, {name: np.ascontiguousarray(x)})[0]
    rows.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
np.save(out, np.concatenate(rows).astype(np.float32))
"""


def make_crops(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` 112x112 face crops (the test fixture's face, shifted and re-lit), as JPEGs."""
    import cv2
    from bench_e2e import FIXTURE

    from kface_cli.face.imageio import read_image, write_image

    face = cv2.resize(read_image(FIXTURE), (128, 128), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    for i in range(n):
        dx, dy = rng.integers(0, 16, 2)
        crop = face[dy : dy + 112, dx : dx + 112].astype(np.float32) * rng.uniform(0.8, 1.2)
        write_image(folder / f"id{i // 10:03d}" / f"{i:04d}.jpg", np.clip(crop, 0, 255).astype(np.uint8))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="ONNX model (default: a random-weight mbf, exported here)")
    ap.add_argument("--crops", type=Path, help="folder of aligned 112x112 crops (default: 600 made here)")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "KFACE_NO_PROGRESS": "1",
            "KFACE_CACHE": str(tmp / "cache"),
        }
        if args.model:
            model = args.model.resolve()
        else:
            from bench_startup import make_model

            model = make_model(tmp)
        crops = args.crops
        if crops is None:
            crops = tmp / "crops"
            make_crops(crops, args.images)
        n = sum(1 for p in crops.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        (tmp / "bare.py").write_text(BARE)
        bare = [sys.executable, str(tmp / "bare.py"), str(crops), str(model), str(tmp / "bare.npy")]
        kface = [sys.executable, "-m", "kface_cli", "embed", str(crops), "--aligned", "--model", str(model)]
        kface += ["--out", str(tmp / "kface.npy")]
        timed(bare, env)  # warm the page cache (files, libraries) for both
        timed(kface, env)
        a, b = np.load(tmp / "bare.npy"), np.load(tmp / "kface.npy")
        agree = float(np.min(np.sum(a * b, axis=1))) if a.shape == b.shape else float("nan")
        rounds = []
        print(f"{n} crops, model {model.name}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        for r in range(args.rounds):
            bw, bc = timed(bare, env)
            kw, kc = timed(kface, env)
            row = {"round": r + 1, "bare_s": round(bw, 2), "kface_s": round(kw, 2), "ratio": round(bw / kw, 3)}
            row.update(bare_cpu_s=round(bc, 2), kface_cpu_s=round(kc, 2), load_average=round(os.getloadavg()[0], 2))
            rounds.append(row)
            print("  " + json.dumps(row), flush=True)
        ratio = statistics.median(r["ratio"] for r in rounds)
        cpu_ratio = statistics.median(r["bare_cpu_s"] / r["kface_cpu_s"] for r in rounds)
        report = {"crops": n, "rounds": rounds, "ratio": ratio, "cpu_ratio": round(cpu_ratio, 3), "min_cosine": agree}
        print(
            f"kface embed --aligned / bare ONNX Runtime loop, whole process, {n} crops: {ratio:.3f} "
            f"(bare s / kface s, median of {len(rounds)} interleaved rounds; goal {GOAL}); by CPU seconds "
            f"{cpu_ratio:.3f}; same embeddings: min cosine {agree:.6f}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
