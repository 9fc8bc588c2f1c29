"""Sub-center cleaning on sample data with injected label noise: flag precision/recall and what
cleaning buys in val accuracy.

    python benchmarks/bench_clean.py -w WORKSPACE          # WORKSPACE: after extract/crop/split
    python benchmarks/bench_clean.py -w WORKSPACE --stage noise   # only build the folders

Noise (seeded): 3 training identities are taken out and 10 of each one's images are mixed into
the others as outliers (people who are in no class); 10% of the remaining images are moved to a
wrong identity. The folders (hard links) are ``bench_clean/clean`` (the 27 kept identities,
untouched), ``bench_clean/noisy`` and, after ``kface clean --apply``, ``bench_clean/cleaned``.
K-Face file names start with the person's ID, which is the ground truth of every image.

Runs (mbf_small, the demo config, in ``runs/``): ``clean-sub`` (sub-center ArcFace, K=3, on the
noisy folder: the model ``kface clean`` reads), then ArcFace on ``clean``, ``noisy`` and
``cleaned``. Printed: precision and recall of the flagged set against the truth, and each
retrained model's best val accuracy, with the share of the noise's cost that cleaning recovers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

NOISE_FRACTION = 0.10  # share of the kept identities' images moved to a wrong identity
OUTLIER_IDS = 3  # identities whose images are mixed in as outliers
OUTLIERS_PER_ID = 10
SEED = 0
TRAIN_CONFIG = "demo_mbf"
RUNS = {"clean-sub": "noisy", "clean-clean": "clean", "clean-noisy": "noisy", "clean-cleaned": "cleaned"}


def true_identity(path: Path) -> str:
    """The person in a K-Face crop: its file name starts with the ID (``<ID>_S001_L1_...``)."""
    return path.name.split("_", 1)[0]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def inject_noise(train_dir: Path, out: Path, seed: int = SEED) -> dict[str, int]:
    """Write ``out/clean`` and ``out/noisy`` from ``train_dir`` (see the module doc)."""
    rng = random.Random(seed)
    ids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    outlier_ids = sorted(rng.sample(ids, OUTLIER_IDS))
    kept = [i for i in ids if i not in outlier_ids]
    shutil.rmtree(out / "clean", ignore_errors=True)
    shutil.rmtree(out / "noisy", ignore_errors=True)
    files = [f for i in kept for f in sorted((train_dir / i).iterdir())]
    moved = set(rng.sample(range(len(files)), round(NOISE_FRACTION * len(files))))
    for n, f in enumerate(files):
        _link(f, out / "clean" / f.parent.name / f.name)
        target = rng.choice([i for i in kept if i != f.parent.name]) if n in moved else f.parent.name
        _link(f, out / "noisy" / target / f.name)
    outliers = [f for i in outlier_ids for f in sorted((train_dir / i).iterdir())[::3][:OUTLIERS_PER_ID]]
    for f in outliers:
        _link(f, out / "noisy" / rng.choice(kept) / f.name)
    return {"identities": len(kept), "images": len(files), "moved": len(moved), "outliers": len(outliers)}


def flag_quality(csv_path: Path, thresholds: tuple[float, ...]) -> list[dict[str, float]]:
    """Precision and recall of the flagged set at each threshold, against the file-name truth."""
    import csv

    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    noisy = {r["path"] for r in rows if true_identity(Path(r["path"])) != r["identity"]}
    out = []
    for t in thresholds:
        flagged = {r["path"] for r in rows if float(r["angle"]) > t}
        hit = len(flagged & noisy)
        out.append(
            {
                "threshold": t,
                "flagged": len(flagged),
                "noisy": len(noisy),
                "precision": hit / len(flagged) if flagged else float("nan"),
                "recall": hit / len(noisy) if noisy else float("nan"),
            }
        )
    return out


def best_val_accuracy(run_dir: Path) -> tuple[float, int]:
    """(best val accuracy, epochs) from a run's log.jsonl."""
    epochs = [r for r in map(json.loads, open(run_dir / "log.jsonl", encoding="utf-8")) if r.get("type") == "epoch"]
    return max(r["val"]["accuracy"] for r in epochs), len(epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workdir", type=Path, required=True)
    ap.add_argument("--stage", choices=["noise", "flags", "retrain", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    ap.add_argument("--csv", type=Path, help="flags: score this clean.csv (of `kface clean` on clean-sub) instead")
    ap.add_argument("--threshold", type=float, default=None, help="kface clean --threshold (default: the paper's 77)")
    args = ap.parse_args()
    ws = args.workdir.resolve()
    out = ws / "bench_clean"
    from kface_cli.research.clean import DEFAULT_THRESHOLD_DEG, clean_run
    from kface_cli.train.loop import train_from_options

    threshold = args.threshold or DEFAULT_THRESHOLD_DEG
    extra = {"epochs": args.epochs} if args.epochs else {}

    def run(name: str) -> Path:
        folder = out / RUNS[name]
        if not (ws / "runs" / name / "checkpoint.pt").exists():
            loss = "subcenter" if name == "clean-sub" else "arcface"
            opts = {"workdir": str(ws), "data": str(folder), "loss": loss, "name": name, **extra}
            train_from_options(TRAIN_CONFIG, opts)
        return ws / "runs" / name

    if args.stage in ("noise", "all"):
        print(json.dumps(inject_noise(ws / "split" / "train", out)))
    if args.stage in ("flags", "all"):
        csv_path = args.csv
        if csv_path is None:
            shutil.rmtree(out / "cleaned", ignore_errors=True)
            result = clean_run(
                run("clean-sub"), threshold=threshold, report=out / "report", apply_to=out / "cleaned", workdir=ws
            )
            print(f"kface clean: {len(result.flagged)} of {result.images} flagged at {threshold:g} degrees")
            csv_path = result.csv
        print("| threshold | flagged | noisy | precision | recall |\n|---|---|---|---|---|")
        for q in flag_quality(csv_path, (60.0, 70.0, threshold, 80.0, 85.0)):
            print(f"| {q['threshold']:g} | {q['flagged']} | {q['noisy']} | {q['precision']:.3f} | {q['recall']:.3f} |")
    if args.stage in ("retrain", "all"):
        acc = {name: best_val_accuracy(run(name)) for name in ("clean-clean", "clean-noisy", "clean-cleaned")}
        for name, (a, e) in acc.items():
            print(f"{RUNS[name]:>8}: best val accuracy {a:.4f} ({e} epochs)")
        cost = acc["clean-clean"][0] - acc["clean-noisy"][0]
        gain = acc["clean-cleaned"][0] - acc["clean-noisy"][0]
        print(
            f"noise cost {cost:+.4f}; cleaning recovers {gain:+.4f}"
            + (f" ({gain / cost:.0%} of the cost)" if cost > 0 else "")
        )


if __name__ == "__main__":
    main()
