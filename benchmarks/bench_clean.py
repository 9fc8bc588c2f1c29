"""Sub-center cleaning on sample data with injected label noise: flag precision/recall and what
cleaning buys in val accuracy, over several training seeds.

    python benchmarks/bench_clean.py -w WORKSPACE          # WORKSPACE: after extract/crop/split
    python benchmarks/bench_clean.py -w WORKSPACE --stage noise   # only build the folders
    python benchmarks/bench_clean.py -w WORKSPACE --sub-seeds 0 1 2 --seeds 0 1 2 --clean margin:12 angle:77
    python benchmarks/bench_clean.py -w WORKSPACE --noise-seed 1 --stage noise   # a held-out noise draw,
    python benchmarks/bench_clean.py -w WORKSPACE --noise-seed 1 --stage flags   # in bench_clean-noise1/

Noise (seeded): 3 training identities are taken out and 10 of each one's images are mixed into
the others as outliers (people who are in no class); 10% of the remaining images are moved to a
wrong identity. The folders (hard links) are ``bench_clean/clean`` (the 27 kept identities,
untouched), ``bench_clean/noisy`` and, after ``kface clean --apply``, ``bench_clean/cleaned-<rule><cut>``.
K-Face file names start with the person's ID, which is the ground truth of every image.

Runs (mbf_small, the demo config, in ``runs/``; a run already there is reused): ``clean-sub-s<seed>``
(sub-center ArcFace, K=3, on the noisy folder: the models ``kface clean`` reads), then ArcFace on
``clean``, ``noisy`` and each cleaned folder with every ``--seeds`` seed (``clean-<folder>-s<seed>``).
Printed: precision and recall of the flagged set against the truth on a grid of cuts for both
rules (each sub-center seed, and their mean); each folder's best val accuracy (mean +- standard
deviation over the seeds) and the share of the noise's cost that cleaning recovers, from the means.
The cleaned folders are made from the first sub-center seed's run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
from pathlib import Path

NOISE_FRACTION = 0.10  # share of the kept identities' images moved to a wrong identity
OUTLIER_IDS = 3  # identities whose images are mixed in as outliers
OUTLIERS_PER_ID = 10
SEED = 0
TRAIN_CONFIG = "demo_mbf"
BOOTSTRAP = 2000  # resamples of the seeds behind the recovered share's interval
GRIDS = {"angle": range(65, 81), "margin": range(0, 26, 2)}  # cuts (degrees) scored for each rule


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


def flag_quality(csv_path: Path, rule: str, cuts: list[float]) -> list[tuple[float, int, float, float]]:
    """(cut, flagged, precision, recall) of ``rule`` (a clean.csv column) at each cut, against the file-name truth."""
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    noisy = {r["path"] for r in rows if true_identity(Path(r["path"])) != r["identity"]}
    out = []
    for t in cuts:
        flagged = {r["path"] for r in rows if float(r[rule]) > t}
        hit = len(flagged & noisy)
        out.append((t, len(flagged), hit / len(flagged) if flagged else float("nan"), hit / len(noisy)))
    return out


def best_val_accuracy(run_dir: Path) -> float:
    """Best val accuracy of a run, from its log.jsonl."""
    epochs = [r for r in map(json.loads, open(run_dir / "log.jsonl", encoding="utf-8")) if r.get("type") == "epoch"]
    return max(r["val"]["accuracy"] for r in epochs)


def recovered_interval(acc: dict[str, list[float]], folder: str, seed: int = SEED) -> tuple[float, float]:
    """90% bootstrap interval of the recovered share: each folder's seeds resampled on their own."""
    rng = random.Random(seed)

    def mean(f: str) -> float:
        return statistics.mean(rng.choices(acc[f], k=len(acc[f])))

    shares = []
    for _ in range(BOOTSTRAP):
        clean, noisy, cleaned = mean("clean"), mean("noisy"), mean(folder)
        if clean > noisy:
            shares.append((cleaned - noisy) / (clean - noisy))
    q = statistics.quantiles(shares, n=20)
    return q[0], q[-1]


def _setting(text: str) -> tuple[str, float]:
    rule, _, cut = text.partition(":")
    return rule, float(cut)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workdir", type=Path, required=True)
    ap.add_argument("--stage", choices=["noise", "flags", "retrain", "all"], default="all")
    ap.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="training epochs (8: the numbers of docs/research.md; demo_mbf itself now trains 12)",
    )
    ap.add_argument(
        "--noise-seed", type=int, default=SEED, help="seed of the injected noise (not 0: a held-out noise draw)"
    )
    ap.add_argument("--sub-seeds", type=int, nargs="+", default=[0], help="seeds of the sub-center runs scored")
    ap.add_argument("--csv", type=Path, nargs="+", help="flags: score these clean.csv files (of other runs) instead")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every retraining")
    ap.add_argument(
        "--clean",
        type=_setting,
        nargs="+",
        default=None,
        metavar="RULE:CUT",
        help="cleaned folders to retrain on, e.g. margin:12 angle:77 (default: kface clean's default)",
    )
    args = ap.parse_args()
    ws = args.workdir.resolve()
    suffix = f"-noise{args.noise_seed}" if args.noise_seed != SEED else ""
    out = ws / f"bench_clean{suffix}"
    from kface_cli.research.clean import DEFAULT_RULE, DEFAULT_THRESHOLD_DEG, clean_run
    from kface_cli.train.loop import train_from_options

    settings = args.clean or [(str(DEFAULT_RULE), DEFAULT_THRESHOLD_DEG[DEFAULT_RULE])]
    extra = {"epochs": args.epochs}

    def run(folder: str, seed: int, loss: str = "arcface") -> Path:
        name = f"clean{suffix}-{'sub' if loss == 'subcenter' else folder}-s{seed}"
        if not (ws / "runs" / name / "checkpoint.pt").exists():
            opts = {"workdir": str(ws), "data": str(out / folder), "loss": loss, "name": name, "seed": seed, **extra}
            train_from_options(TRAIN_CONFIG, opts)
        return ws / "runs" / name

    if args.stage in ("noise", "all"):
        print(json.dumps(inject_noise(ws / "split" / "train", out, seed=args.noise_seed)))
    cleaned = [f"cleaned-{rule}{cut:g}" for rule, cut in settings]
    if args.stage in ("flags", "all"):
        if args.csv:
            reports = {p.parent.name: p for p in args.csv}
        else:
            reports = {
                f"sub seed {s}": clean_run(
                    run("noisy", s, "subcenter"), report=out / f"report-s{s}", sheet_max=0, workdir=ws
                ).csv
                for s in args.sub_seeds
            }
        for rule, grid in GRIDS.items():
            cols = list(reports) + (["mean"] if len(reports) > 1 else [])
            print(f"\n--rule {rule}: flagged / precision / recall")
            print(f"| cut | {' | '.join(cols)} |\n|---|{'---|' * len(cols)}")
            scores = [flag_quality(path, rule, list(grid)) for path in reports.values()]
            for k, cut in enumerate(grid):
                cells = [f"{q[k][1]} / {q[k][2]:.2f} / {q[k][3]:.2f}" for q in scores]
                if len(scores) > 1:
                    mean = [statistics.mean(q[k][i] for q in scores) for i in (1, 2, 3)]
                    cells.append(f"{mean[0]:.0f} / {mean[1]:.3f} / {mean[2]:.3f}")
                print(f"| {cut} | {' | '.join(cells)} |")
        for (rule, cut), folder in zip(settings, cleaned):
            if args.csv:
                break  # scoring other runs' files: the cleaned folders stay as they are
            shutil.rmtree(out / folder, ignore_errors=True)
            r = clean_run(
                run("noisy", args.sub_seeds[0], "subcenter"),
                rule=rule,
                threshold=cut,
                report=out / f"report-{folder}",
                apply_to=out / folder,
                sheet_max=0,
                workdir=ws,
            )
            print(f"{folder}: {len(r.flagged)} of {r.images} flagged with --rule {rule} --threshold {cut:g}")
    if args.stage in ("retrain", "all"):
        acc = {f: [best_val_accuracy(run(f, s)) for s in args.seeds] for f in ["clean", "noisy", *cleaned]}
        mean = {f: statistics.mean(a) for f, a in acc.items()}
        print(f"\nbest val accuracy over seeds {' '.join(map(str, args.seeds))}")
        print("| training folder | images | mean | sd | per seed | recovered |\n|---|---|---|---|---|---|")
        cost = mean["clean"] - mean["noisy"]
        for f, a in acc.items():
            images = sum(1 for _ in (out / f).glob("*/*"))
            sd = statistics.stdev(a) if len(a) > 1 else float("nan")
            recovered = ""
            if f.startswith("cleaned") and cost > 0 and len(a) > 1:
                lo, hi = recovered_interval(acc, f)
                recovered = f"{(mean[f] - mean['noisy']) / cost:.0%} ({lo:.0%} to {hi:.0%})"
            per_seed = " ".join(f"{x:.2%}" for x in a)
            print(f"| {f} | {images} | {mean[f]:.2%} | {sd:.2%} | {per_seed} | {recovered} |")
        print(
            f"noise cost {cost:+.2%} (clean minus noisy, means); recovered: (cleaned - noisy) / cost, from the means"
            f" (in brackets: 90% bootstrap interval over the seeds, {BOOTSTRAP} resamples)"
        )


if __name__ == "__main__":
    main()
