"""Sub-center cleaning on sample data with injected label noise, choosing on development noise
draws and reporting on held-out ones: flag precision/recall and what cleaning buys, with intervals.

    python benchmarks/bench_clean.py -w WORKSPACE                       # every stage, default sizes
    python benchmarks/bench_clean.py -w WORKSPACE --stage choose        # development draws only
    python benchmarks/bench_clean.py -w WORKSPACE --dev-draws 0 --heldout-draws 1 2 \\
        --sub-seeds 0 1 --seeds 0 1 2 --epochs 8

WORKSPACE: after ``kface extract``, ``crop`` and ``split --test-ids N`` (retraining is scored on the
test pairs, best epoch chosen on val; without a test part, on val, and the script says so).

Noise (one draw per ``--*-draws`` seed): 3 training identities are taken out and 10 of each one's
images are mixed into the others as outliers (people in no class); 10% of the remaining images are
moved to a wrong identity. Folders (hard links): ``bench_clean/draw<d>/{clean,noisy,cleaned-*}``.
K-Face file names start with the person's ID, the ground truth of every image.

1. choose (development draws only): a sub-center ArcFace run (``--config demo_mbf --loss
   subcenter``) per draw and ``--sub-seeds`` seed; both rules' grids of cuts are scored, and the
   rule and cut with the highest mean F1 of the flags are chosen, and the angle rule's best cut too
   (a tuned margin rule is compared with a tuned angle rule). Written to ``choice.json``.
2. heldout: the same runs on the held-out draws; the chosen settings, the authors' fixed angle
   cut (75 degrees: ``drop.py`` in insightface's recognition/subcenter_arcface) and kface clean's
   default (margin 12) are scored, with
   95% Wilson intervals pooled over draws and sub-center seeds (images as trials) and the range
   over runs.
3. retrain (held-out draws): ArcFace on clean, noisy and each cleaned folder with every ``--seeds``
   seed; accuracy on the test pairs (10-fold) of the best-on-val epoch; per folder the mean with a
   95% bootstrap interval over runs, and the share of the noise's cost that cleaning recovers with
   a 95% bootstrap interval (each draw's seeds resampled within the draw, folders independently).

A run's name holds a digest of its training folder's file list, its seed and epochs, so a changed
folder or setting trains afresh (never a stale run reused by name), and a run is reused only if it
ended (its log holds the "end" record: an interrupted run also has a best-epoch backbone.pth).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import wilson  # noqa: E402
from runs import finished  # noqa: E402

NOISE_FRACTION = 0.10  # share of the kept identities' images moved to a wrong identity
OUTLIER_IDS = 3  # identities whose images are mixed in as outliers
OUTLIERS_PER_ID = 10
TRAIN_CONFIG = "demo_mbf"
BOOTSTRAP = 2000
AUTHORS_ANGLE = 75.0  # insightface recognition/subcenter_arcface drop.py --threshold default; README "> 75 degrees"
GRIDS = {"angle": [float(c) for c in range(65, 91)], "margin": [float(c) for c in range(0, 31, 2)]}


def true_identity(path: Path) -> str:
    """The person in a K-Face crop: its file name starts with the ID (``<ID>_S001_L1_...``)."""
    return path.name.split("_", 1)[0]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def inject_noise(train_dir: Path, out: Path, seed: int) -> dict[str, int]:
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


def flag_counts(csv_path: Path, rule: str, cut: float) -> tuple[int, int, int]:
    """(flagged, correctly flagged, noisy images) of ``rule > cut`` against the file-name truth."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    noisy = {r["path"] for r in rows if true_identity(Path(r["path"])) != r["identity"]}
    flagged = {r["path"] for r in rows if float(r[rule]) > cut}
    return len(flagged), len(flagged & noisy), len(noisy)


def f1(flagged: int, hit: int, noisy: int) -> float:
    return 2 * hit / (flagged + noisy) if flagged + noisy else 0.0


def choose(reports: list[Path]) -> dict:
    """The rule and cut with the highest mean F1 over ``reports`` (development runs), and the angle
    rule's best cut; ties: the smaller cut."""
    scored = {
        (rule, cut): statistics.mean(f1(*flag_counts(p, rule, cut)) for p in reports)
        for rule, grid in GRIDS.items()
        for cut in grid
    }
    best = max(scored, key=lambda k: (scored[k], -k[1]))
    best_angle = max((k for k in scored if k[0] == "angle"), key=lambda k: (scored[k], -k[1]))
    return {
        "criterion": "highest mean F1 of the flags over the development runs",
        "chosen": {"rule": best[0], "cut": best[1], "dev_f1": scored[best]},
        "angle_tuned": {"rule": "angle", "cut": best_angle[1], "dev_f1": scored[best_angle]},
        "dev_reports": [str(p) for p in reports],
    }


def folder_digest(folder: Path) -> str:
    """A digest of the folder's file list (identity/file): the data a run trains on."""
    names = sorted(f"{p.parent.name}/{p.name}" for p in folder.glob("*/*"))
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:10]


def bootstrap_mean(values: list[float], rng: random.Random) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def recovered_share(acc: dict[str, dict[int, list[float]]], folder: str, rng: random.Random):
    """(share, low, high): (cleaned - noisy) / (clean - noisy) from the means over draws, with a 95%
    bootstrap interval (each draw's seeds resampled within the draw, folders independently)."""

    def mean(f: str, resample: bool) -> float:
        per_draw = [statistics.mean(rng.choices(v, k=len(v)) if resample else v) for v in acc[f].values() if v]
        return statistics.mean(per_draw)

    clean, noisy, cleaned = mean("clean", False), mean("noisy", False), mean(folder, False)
    share = (cleaned - noisy) / (clean - noisy) if clean > noisy else float("nan")
    shares = []
    for _ in range(BOOTSTRAP):
        c, n, x = mean("clean", True), mean("noisy", True), mean(folder, True)
        if c > n:
            shares.append((x - n) / (c - n))
    if len(shares) < BOOTSTRAP // 2:
        return share, float("nan"), float("nan")
    shares.sort()
    return share, shares[int(0.025 * len(shares))], shares[int(0.975 * len(shares)) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workdir", type=Path, required=True)
    ap.add_argument("--stage", choices=["choose", "heldout", "retrain", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of every run")
    ap.add_argument("--augment", default="jitter", help="training augmentation of every run (pinned: not the default)")
    ap.add_argument("--dev-draws", type=int, nargs="+", default=[0], help="noise draws the rule and cut are chosen on")
    ap.add_argument("--heldout-draws", type=int, nargs="+", default=[1, 2], help="noise draws that report")
    ap.add_argument("--sub-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the sub-center runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every retraining")
    args = ap.parse_args()
    ws = args.workdir.resolve()
    if set(args.dev_draws) & set(args.heldout_draws):
        ap.error("a noise draw cannot be both development and held-out")
    out = ws / "bench_clean"
    from kface_cli.research.clean import DEFAULT_RULE, DEFAULT_THRESHOLD_DEG, clean_run
    from kface_cli.train.loop import train_from_options

    def draw_dir(d: int) -> Path:
        folder = out / f"draw{d}"
        if not (folder / "noisy").is_dir():
            print(f"noise draw {d}: {json.dumps(inject_noise(ws / 'split' / 'train', folder, seed=d))}")
        return folder

    def run(data: Path, seed: int, loss: str = "arcface") -> Path:
        name = f"bc-{folder_digest(data)}-{loss}-s{seed}-e{args.epochs}" + (
            "" if args.augment == "jitter" else f"-{args.augment.replace(',', '-')}"
        )
        if not finished(ws / "runs" / name):
            shutil.rmtree(ws / "runs" / name, ignore_errors=True)  # an interrupted run: start again
            opts = {"workdir": str(ws), "data": str(data), "loss": loss, "name": name, "seed": seed}
            train_from_options(TRAIN_CONFIG, {**opts, "epochs": args.epochs, "augment": args.augment})
        return ws / "runs" / name

    def reports(draws: list[int]) -> dict[tuple[int, int], Path]:
        return {
            (d, s): clean_run(
                run(draw_dir(d) / "noisy", s, "subcenter"), report=draw_dir(d) / f"report-s{s}", sheet_max=0, workdir=ws
            ).csv
            for d in draws
            for s in args.sub_seeds
        }

    choice_file = out / "choice.json"
    if args.stage in ("choose", "all"):
        dev = reports(args.dev_draws)
        choice = {**choose(list(dev.values())), "dev_draws": args.dev_draws, "sub_seeds": args.sub_seeds}
        out.mkdir(parents=True, exist_ok=True)
        choice_file.write_text(json.dumps(choice, indent=2) + "\n")
        print(f"\nCHOSEN on development noise draws {args.dev_draws} (sub-center seeds {args.sub_seeds}):")
        print(f"  {choice['criterion']}: --rule {choice['chosen']['rule']} --threshold {choice['chosen']['cut']:g}"
              f" (dev F1 {choice['chosen']['dev_f1']:.3f}); angle rule's best cut {choice['angle_tuned']['cut']:g}"
              f" (dev F1 {choice['angle_tuned']['dev_f1']:.3f}); {choice_file}")  # fmt: skip
    if args.stage == "choose":
        return
    if not choice_file.is_file():
        ap.error(f"{choice_file} is missing: run --stage choose first (the choice is made on development draws)")
    choice = json.loads(choice_file.read_text())
    if set(choice["dev_draws"]) & set(args.heldout_draws):
        ap.error(f"held-out draws {args.heldout_draws} overlap the development draws {choice['dev_draws']}")
    settings = [
        ("chosen", choice["chosen"]["rule"], choice["chosen"]["cut"]),
        ("angle, tuned on dev", "angle", choice["angle_tuned"]["cut"]),
        ("angle, the authors' 75", "angle", AUTHORS_ANGLE),
        ("kface clean's default", str(DEFAULT_RULE), float(DEFAULT_THRESHOLD_DEG[DEFAULT_RULE])),
    ]
    settings = [s for k, s in enumerate(settings) if (s[1], s[2]) not in {(t[1], t[2]) for t in settings[:k]}]
    print(f"\nchoice (from {choice_file}, made on draws {choice['dev_draws']}): " + "; ".join(
        f"{label}: {rule} {cut:g}" for label, rule, cut in settings))  # fmt: skip

    if args.stage in ("heldout", "all"):
        held = reports(args.heldout_draws)
        print(f"\nHELD-OUT noise draws {args.heldout_draws}, sub-center seeds {args.sub_seeds}: flags")
        print("| setting | flagged | precision (95% Wilson) | recall (95% Wilson) | precision range | recall range |")
        print("|---|---|---|---|---|---|")
        for label, rule, cut in settings:
            counts = [flag_counts(p, rule, cut) for p in held.values()]
            flagged, hit, noisy = (sum(c[i] for c in counts) for i in range(3))
            p_lo, p_hi = wilson(hit, flagged)
            r_lo, r_hi = wilson(hit, noisy)
            precs = [h / f for f, h, _ in counts if f]
            recs = [h / n for _, h, n in counts if n]
            print(
                f"| {label} ({rule} > {cut:g}) | {flagged} | {hit / max(flagged, 1):.3f} ({p_lo:.3f}-{p_hi:.3f}) | "
                f"{hit / max(noisy, 1):.3f} ({r_lo:.3f}-{r_hi:.3f}) | {min(precs):.2f}-{max(precs):.2f} | "
                f"{min(recs):.2f}-{max(recs):.2f} |"
            )
        print(f"runs: {', '.join(f'draw {d} sub seed {s}' for d, s in held)}")

    if args.stage in ("retrain", "all"):
        from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate
        from kface_cli.workspace import Workspace

        part = "test" if Workspace(ws).test_pairs.is_file() else "val"
        if part == "val":
            print("WARNING: no test part (kface split --test-ids): accuracy is read on val, which chose the epoch")

        def accuracy(run_dir: Path) -> float:
            cached = run_dir / f"bench_{part}_accuracy.json"
            if cached.is_file():
                return json.loads(cached.read_text())["accuracy"]
            s = evaluate(EvaluateOptions(model=str(run_dir), workdir=ws, split=part, write_report=False)).summary
            cached.write_text(json.dumps({"accuracy": s["accuracy"], "pairs": s["pairs_source"]}) + "\n")
            return s["accuracy"]

        folders = ["clean", "noisy"] + [f"cleaned-{rule}{cut:g}" for _, rule, cut in settings]
        acc: dict[str, dict[int, list[float]]] = {f: {} for f in folders}
        for d in args.heldout_draws:
            base = draw_dir(d)
            for _label, rule, cut in settings:
                target = base / f"cleaned-{rule}{cut:g}"
                if not target.is_dir():
                    clean_run(
                        run(base / "noisy", args.sub_seeds[0], "subcenter"),
                        rule=rule,
                        threshold=cut,
                        report=base / f"report-{target.name}",
                        apply_to=target,
                        sheet_max=0,
                        workdir=ws,
                    )
            for f in folders:
                acc[f][d] = [accuracy(run(base / f, s)) for s in args.seeds]
        rng = random.Random(0)
        print(
            f"\nHELD-OUT draws {args.heldout_draws}: ArcFace retrained with seeds {args.seeds}, {args.epochs} epochs; "
            f"10-fold accuracy on the {part} pairs (best epoch chosen on val)"
        )
        print("| training folder | mean | 95% bootstrap | per run | recovered (95% bootstrap) |\n|---|---|---|---|---|")
        for f in folders:
            values = [v for d in args.heldout_draws for v in acc[f][d]]
            lo, hi = bootstrap_mean(values, rng)
            rec = ""
            if f.startswith("cleaned"):
                share, s_lo, s_hi = recovered_share(acc, f, rng)
                rec = f"{share:.0%} ({s_lo:.0%} to {s_hi:.0%})"
            runs = " ".join(f"{v:.2%}" for v in values)
            print(f"| {f} | {statistics.mean(values):.2%} | {lo:.2%}-{hi:.2%} | {runs} | {rec} |")
        print("recovered: (cleaned - noisy) / (clean - noisy) from the means over draws")


if __name__ == "__main__":
    main()
