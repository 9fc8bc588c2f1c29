"""Training throughput on real data: `kface train`'s own step loop against a plain torch loop, and
the data pipeline alone, for each network, in one run.

    python benchmarks/bench_train.py --data WS/split/train        # mbf, r18, r50 on this CPU
    python benchmarks/bench_train.py --networks mbf --steps 6     # one network, longer
    python benchmarks/bench_train.py --device cuda --precision fp16 --batch-size 128 --images 20000 --formats rec

For each network:

* **plain**: the same backbone, ArcFace head, SGD (momentum, weight decay), gradient clipping,
  precision and memory format in a bare loop over one batch already on the device: no loader,
  no bookkeeping, no files. What the hardware does.
* **kface**: :func:`kface_cli.train.loop.train` (what ``kface train`` runs) on the identity
  folders and on a ``train.rec`` made from the same images, 2 epochs of ``--steps`` steps; the
  second epoch's samples/s (loader workers already running) is compared with plain.
* **pipeline**: one loader worker's work alone (read, decode, preprocess) on the ``.rec``, in
  images/s, against the network's own rate on one core (the plain loop with one thread).

Goals (issue 12): kface >= 0.9 x plain for every network; pipeline per worker >= 4 x what the
network consumes on one core. The machine may be shared: only ratios measured in this same run
mean something. Without ``--data``, face-like images are generated (``--images``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CLASSES_PER_IMAGES = 10  # generated data: 10 images per identity


def make_data(root: Path, *, images: int, source: Path | None, seed: int = 0) -> tuple[Path, Path]:
    """Identity folders (``source`` or generated) and a ``train.rec`` of the same encoded images."""
    import cv2
    import numpy as np

    from kface_cli.formats.recordio import RecordHeader, RecordIOWriter, pack

    folder = source or root / "folder"
    if source is None:
        rng = np.random.default_rng(seed)
        for i in range(max(2, images // CLASSES_PER_IMAGES)):
            proto = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
            d = folder / f"id{i:05d}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(CLASSES_PER_IMAGES):
                img = cv2.resize(proto, (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.float32)
                img = np.clip(img * rng.uniform(0.7, 1.3) + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                cv2.imwrite(str(d / f"{k}.jpg"), img)
    rec_dir = root / "rec"
    rec_dir.mkdir(parents=True, exist_ok=True)
    identities = sorted(p for p in folder.iterdir() if p.is_dir())
    key = 0
    with RecordIOWriter(rec_dir / "train.rec") as w:
        for label, d in enumerate(identities):
            for f in sorted(d.iterdir()):
                w.write(key, pack(RecordHeader(0, float(label), key, 0), f.read_bytes()))
                key += 1
    (rec_dir / "property").write_text(f"{len(identities)},112,112\n")
    return folder, rec_dir


def plain_rate(network, *, dataset, batch_size, steps, device, precision, channels_last, threads=0) -> dict:
    """The bare loop: one batch of the dataset on the device, `steps` timed steps after one warm-up."""
    import torch

    from kface_cli.models.heads import HeadConfig, build_head
    from kface_cli.models.registry import get_backbone

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        lowp = precision != "fp32"
        backbone = get_backbone(
            network, 512, fp16=lowp, autocast_dtype="bfloat16" if precision == "bf16" else "float16"
        ).to(device)
        head = build_head(dataset.num_classes, 512, HeadConfig(loss="arcface")).to(device)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        params = [p for p in backbone.parameters() if p.requires_grad]
        opt = torch.optim.SGD(
            [{"params": params}, {"params": list(head.parameters())}], lr=0.02, momentum=0.9, weight_decay=5e-4
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        items = [dataset[(i, False)] for i in range(batch_size)]
        x = torch.stack([t for t, _ in items]).to(device)
        y = torch.tensor([label for _, label in items], device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def step():
            loss = head(backbone(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            scaler.step(opt)
            scaler.update()
            return loss

        step()
        _sync(device)
        _reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        _sync(device)
        dt = time.perf_counter() - t0
        return {
            "samples_per_s": steps * batch_size / dt,
            "loss": float(loss.detach()),
            "peak_gib": _peak(device),
            "threads": torch.get_num_threads(),
        }
    finally:
        torch.set_num_threads(before)


def kface_rate(network, *, data, workdir, batch_size, steps, device, precision, channels_last, workers) -> dict:
    """`kface train`'s loop: 2 epochs of `steps` steps; the second epoch's samples/s."""
    from kface_cli.train.config import TrainConfig
    from kface_cli.train.loop import train

    _reset_peak(device)
    config = TrainConfig(
        data=str(data),
        network=network,
        embedding_size=512,
        batch_size=batch_size,
        epochs=2,
        max_steps_per_epoch=steps,
        lr=0.02,
        precision=precision,
        channels_last=channels_last,
        device=str(device),
        workers=workers,
        val_pairs="none",
        bn_recalibration=0,
        log_every=steps,
        workdir=str(workdir),
        name=f"{network}-{Path(data).name}-{time.monotonic_ns()}",
    ).validate()
    result = train(config)
    return {
        "samples_per_s": result.history[-1]["samples_per_s"],
        "loss": result.history[-1]["loss"],
        "peak_gib": _peak(device),
        "workers": json.loads((result.run_dir / "config.json").read_text())["loader_workers"],
    }


def pipeline_rate(dataset, *, seconds: float) -> float:
    """Images/s of one loader worker's work: read, decode, preprocess (flip drawn), in this process."""
    n, t0 = 0, time.perf_counter()
    while n < 16 or time.perf_counter() - t0 < seconds:
        dataset[(n % len(dataset), bool(n % 2))]
        n += 1
    return n / (time.perf_counter() - t0)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def run(args) -> dict:
    import os

    import torch

    from kface_cli.train.config import TrainConfig
    from kface_cli.train.datasets import open_training_data
    from kface_cli.train.distributed import resolve_device
    from kface_cli.train.loop import use_channels_last

    os.environ.setdefault("KFACE_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)  # both loops: kface train runs in this process
    device = resolve_device(args.device)
    channels_last = (
        use_channels_last(TrainConfig(), device) if args.channels_last is None else args.channels_last == "on"
    )
    report: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder, rec = make_data(Path(tmp), images=args.images, source=Path(args.data) if args.data else None)
        rec_ds = open_training_data(rec, flip=False)
        report.update(
            images=len(rec_ds),
            classes=rec_ds.num_classes,
            data_s=round(time.perf_counter() - t0, 1),
            batch_size=args.batch_size,
            steps=args.steps,
            precision=args.precision,
            channels_last=channels_last,
        )
        pipe = pipeline_rate(rec_ds, seconds=args.pipeline_seconds)
        report["pipeline_images_per_s_per_worker"] = round(pipe, 1)
        print(
            f"{report['images']} images of {report['classes']} identities; {device}, {report['threads']} threads, "
            f"batch {args.batch_size}, {args.precision}, {'channels_last' if channels_last else 'contiguous'}; "
            f"pipeline: {pipe:.0f} images/s per worker (.rec: read + decode + preprocess)",
            flush=True,
        )
        common = dict(batch_size=args.batch_size, device=device, precision=args.precision, channels_last=channels_last)
        data = {"folder": folder, "rec": rec}
        rows = []
        for net in args.networks:
            row: dict = {"network": net}
            before = plain_rate(net, dataset=rec_ds, steps=args.steps, **common)
            print(f"  {net}: plain {before['samples_per_s']:.1f} samples/s", flush=True)
            if args.memory_format_check:
                other = plain_rate(
                    net, dataset=rec_ds, steps=args.steps, **{**common, "channels_last": not channels_last}
                )
                row["plain_other_memory_format"] = other
                print(
                    f"  {net}: plain, {'contiguous' if channels_last else 'channels_last'} {other['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
            for fmt in args.formats:
                k = kface_rate(
                    net, data=data[fmt], workdir=Path(tmp) / "ws", steps=args.steps, workers=args.workers, **common
                )
                row[f"kface_{fmt}"] = k
                print(
                    f"  {net}: kface train ({fmt}, {k['workers']} workers) {k['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
            # plain again after the kface loops: the mean of both brackets load changes on a shared machine
            after = plain_rate(net, dataset=rec_ds, steps=args.steps, **common)
            print(f"  {net}: plain again {after['samples_per_s']:.1f} samples/s", flush=True)
            row["plain"] = {
                **after,
                "samples_per_s": (before["samples_per_s"] + after["samples_per_s"]) / 2,
                "runs": [before["samples_per_s"], after["samples_per_s"]],
            }
            if device.type == "cpu":
                one = (
                    row["plain"]
                    if torch.get_num_threads() == 1
                    else plain_rate(net, dataset=rec_ds, steps=max(1, args.steps // 2), threads=1, **common)
                )
                row["plain_one_core"] = one
                print(f"  {net}: plain on one core {one['samples_per_s']:.1f} samples/s", flush=True)
            rows.append(row)
    report["networks"] = rows
    return report


def print_table(report: dict) -> None:
    head = f"{'network':8s} {'plain/s':>8s}"
    formats = [k[len("kface_") :] for k in report["networks"][0] if k.startswith("kface_")]
    for fmt in formats:
        head += f" {'kface ' + fmt + '/s':>14s} {'ratio':>6s}"
    if "plain_other_memory_format" in report["networks"][0]:
        head += f" {'other format':>12s}"
    if "plain_one_core" in report["networks"][0]:
        head += f" {'1 core/s':>9s} {'pipeline/net':>12s}"
    print("\n" + head)
    for row in report["networks"]:
        p = row["plain"]["samples_per_s"]
        line = f"{row['network']:8s} {p:8.1f}"
        for fmt in formats:
            k = row[f"kface_{fmt}"]["samples_per_s"]
            row[f"ratio_{fmt}"] = round(k / p, 3)
            line += f" {k:14.1f} {k / p:6.2f}"
        if "plain_other_memory_format" in row:
            row["other_format_ratio"] = round(row["plain_other_memory_format"]["samples_per_s"] / p, 3)
            line += f" {row['other_format_ratio']:11.2f}x"
        if "plain_one_core" in row:
            one = row["plain_one_core"]["samples_per_s"]
            row["pipeline_vs_one_core"] = round(report["pipeline_images_per_s_per_worker"] / one, 1)
            line += f" {one:9.1f} {row['pipeline_vs_one_core']:11.1f}x"
        print(line)
    print(
        "ratio: kface train / plain loop (goal >= 0.9); other format: plain loop in the other memory format / plain; "
        "pipeline/net: one worker's decoded images/s / the network's samples/s on one core (goal >= 4)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=["mbf", "r18", "r50"])
    ap.add_argument("--data", help="identity folders (e.g. a workspace's split/train); default: generated faces")
    ap.add_argument("--images", type=int, default=400, help="generated images when --data is not given")
    ap.add_argument("--formats", nargs="+", default=["folder", "rec"], choices=["folder", "rec"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per loop (r50 on a CPU: ~8 s each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--channels-last", choices=["on", "off"], help="default: what kface train picks for the device")
    ap.add_argument("--memory-format-check", action="store_true", help="also time the plain loop in the other format")
    ap.add_argument("--workers", type=int, help="kface train's loader workers (default: its own, from the cores)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every loop (0: torch's default)")
    ap.add_argument("--pipeline-seconds", type=float, default=3.0)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    report = run(args)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
