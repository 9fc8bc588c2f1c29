"""`kface train` with its default options against a plain torch loop, interleaved, one command.

    python benchmarks/bench_train_defaults.py                      # mbf, 3 rounds: prints the ratio
    python benchmarks/bench_train_defaults.py --rounds 5 --steps 8 --json out.json
    python benchmarks/bench_train_defaults.py --workers 0          # the same, with one option changed
    python benchmarks/bench_train_defaults.py --also-workers 0     # and a --workers 0 arm in every round

The two arms alternate in one process (plain, kface, plain, kface, ..., plain), so that a change
in the machine's load (other jobs starting or ending) hits both alike: each kface round is
compared with the mean of the plain rounds on either side of it, and the ratio printed is the
median over the rounds.

* **plain**: the same backbone, ArcFace head, SGD (momentum, weight decay), gradient clipping and
  memory format as ``kface train``'s defaults, in a bare loop over one batch already in memory:
  no loader, no bookkeeping, no files (benchmarks/bench_train.py's ``plain_rate``).
* **kface**: :func:`kface_cli.train.loop.train` (what ``kface train`` runs) on identity folders
  (what ``kface split`` writes) with nothing but ``--data``, ``--network`` and a short epoch set:
  batch size, loader workers, threads, channels_last, flips, clipping, scaler, logging are the
  defaults. Two epochs of ``--steps`` steps; the second epoch is timed (workers running).

Besides wall-clock samples/s, the CPU seconds of the whole process per sample (all threads; kface's
loader workers are separate processes and are not counted: their share is what the wall clock
shows) are printed: on a busy machine that ratio moves less than the wall-clock one.
Goal (issue 24): kface / plain >= 0.9 for mbf. Without ``--data``, face-like images are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_data, plain_rate  # noqa: E402

GOAL = 0.9


def kface_default_rate(network: str, *, data: Path, workdir: Path, steps: int, workers: int | None) -> dict:
    """`kface train --data DATA --network NET` (defaults otherwise), 2 short epochs; the 2nd timed."""
    from kface_cli.train.config import TrainConfig
    from kface_cli.train.loop import train

    marks: list[tuple[float, float]] = []

    def mark(epoch: int, step: int) -> None:
        if epoch == 1:
            marks.append((time.perf_counter(), time.process_time()))

    config = TrainConfig(
        data=str(data),
        network=network,
        epochs=2,
        max_steps_per_epoch=steps,
        val_pairs="none",  # validation and BatchNorm recalibration run after the epoch: not timed,
        bn_recalibration=0,  # so left out to keep the benchmark short
        workers=workers,
        workdir=str(workdir),
        name=f"{network}-{time.monotonic_ns()}",
    ).validate()
    result = train(config, on_step=mark)
    saved = json.loads((result.run_dir / "config.json").read_text())
    n = (len(marks) - 1) * saved["batch_size"]
    return {
        "samples_per_s": n / (marks[-1][0] - marks[0][0]),
        "samples_per_cpu_s": n / max(marks[-1][1] - marks[0][1], 1e-9),
        "batch_size": saved["batch_size"],
        "workers": saved["loader_workers"],
        "channels_last": saved["channels_last"],
    }


def plain_default_rate(network: str, *, dataset, batch_size: int, steps: int, channels_last: bool) -> dict:
    """The plain loop with kface's defaults (fp32 on a CPU), whole-process CPU time per sample."""
    import torch

    c0 = time.process_time()
    r = plain_rate(
        network,
        dataset=dataset,
        batch_size=batch_size,
        steps=steps,
        device=torch.device("cpu"),
        precision="fp32",
        channels_last=channels_last,
    )
    # plain_rate's own CPU figure is its thread's; this one is the process's (warm-up step included,
    # so subtract it by scaling: steps + 1 steps were run)
    r["samples_per_cpu_s"] = (steps + 1) * batch_size / (time.process_time() - c0)
    return r


def run(args) -> dict:
    import torch

    from kface_cli.train.datasets import open_training_data

    os.environ.setdefault("KFACE_NO_PROGRESS", "1")
    report: dict = {
        "network": args.network,
        "cores": os.cpu_count(),
        "load_average_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rounds": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = make_data(Path(tmp), images=args.images, source=Path(args.data) if args.data else None)
        dataset = open_training_data(folder, flip=False)
        # one kface round first: the defaults it resolves (batch, channels_last) set the plain loop's
        probe = kface_default_rate(args.network, data=folder, workdir=Path(tmp) / "ws", steps=2, workers=args.workers)
        common = dict(
            dataset=dataset, batch_size=probe["batch_size"], steps=args.steps, channels_last=probe["channels_last"]
        )
        report.update(batch_size=probe["batch_size"], workers=probe["workers"], channels_last=probe["channels_last"])
        print(
            f"{args.network}: {len(dataset)} images, batch {probe['batch_size']}, {probe['workers']} loader workers, "
            f"{torch.get_num_threads()} torch threads, channels_last {probe['channels_last']}; "
            f"{args.rounds} rounds of {args.steps} steps, load average {report['load_average_start']}",
            flush=True,
        )
        plains = [plain_default_rate(args.network, **common)]
        for r in range(args.rounds):
            k = kface_default_rate(
                args.network, data=folder, workdir=Path(tmp) / "ws", steps=args.steps + 1, workers=args.workers
            )
            other = (
                kface_default_rate(
                    args.network, data=folder, workdir=Path(tmp) / "ws", steps=args.steps + 1, workers=args.also_workers
                )
                if args.also_workers is not None
                else None
            )
            plains.append(plain_default_rate(args.network, **common))
            p_wall = (plains[-2]["samples_per_s"] + plains[-1]["samples_per_s"]) / 2
            p_cpu = (plains[-2]["samples_per_cpu_s"] + plains[-1]["samples_per_cpu_s"]) / 2
            row = {
                "round": r + 1,
                "plain_samples_per_s": round(p_wall, 3),
                "kface_samples_per_s": round(k["samples_per_s"], 3),
                "ratio_wall": round(k["samples_per_s"] / p_wall, 3),
                "ratio_cpu": round(k["samples_per_cpu_s"] / p_cpu, 3),
                "load_average": round(os.getloadavg()[0], 2),
            }
            if other is not None:
                row[f"workers{args.also_workers}_ratio_wall"] = round(other["samples_per_s"] / p_wall, 3)
                row[f"workers{args.also_workers}_ratio_cpu"] = round(other["samples_per_cpu_s"] / p_cpu, 3)
            report["rounds"].append(row)
            print("  " + json.dumps(row), flush=True)
    report["ratio_wall_median"] = statistics.median(r["ratio_wall"] for r in report["rounds"])
    report["ratio_cpu_median"] = statistics.median(r["ratio_cpu"] for r in report["rounds"])
    if args.also_workers is not None:
        key = f"workers{args.also_workers}_ratio_wall"
        report[f"{key}_median"] = statistics.median(r[key] for r in report["rounds"])
    report["load_average_end"] = round(os.getloadavg()[0], 2)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="mbf")
    ap.add_argument("--data", help="identity folders (e.g. a workspace's split/train); default: generated faces")
    ap.add_argument("--images", type=int, default=600, help="generated images when --data is not given")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per arm and round")
    ap.add_argument("--workers", type=int, help="change kface train's --workers (default: its own rule)")
    ap.add_argument(
        "--also-workers",
        type=int,
        help="a second kface arm in every round with this --workers (e.g. 0), same plain rounds",
    )
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    report = run(args)
    verdict = "meets" if report["ratio_wall_median"] >= GOAL else "BELOW"
    print(
        f"kface train (defaults) / plain loop, {report['network']}: {report['ratio_wall_median']:.3f} wall clock "
        f"(median of {len(report['rounds'])} interleaved rounds; {verdict} the goal {GOAL}), "
        f"{report['ratio_cpu_median']:.3f} by CPU seconds per sample; load average "
        f"{report['load_average_start']} -> {report['load_average_end']} on {report['cores']} cores"
    )
    if args.also_workers is not None:
        print(
            f"kface train --workers {args.also_workers} / plain loop: "
            f"{report[f'workers{args.also_workers}_ratio_wall_median']:.3f} wall clock (same rounds)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
