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
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            loss = step()
        _sync(device)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        return {
            "samples_per_s": steps * batch_size / dt,
            "samples_per_cpu_s": steps * batch_size / dc,
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
    marks: list[tuple[float, float]] = []  # (wall, this thread's CPU) after each step of the 2nd epoch

    def mark(epoch: int, step: int) -> None:
        if epoch == 1:
            _sync(device)
            marks.append((time.perf_counter(), time.thread_time()))

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
    result = train(config, on_step=mark)
    n = (len(marks) - 1) * batch_size  # between the first and the last step's end
    return {
        "samples_per_s": n / (marks[-1][0] - marks[0][0]),
        "samples_per_cpu_s": n / (marks[-1][1] - marks[0][1]),
        "epoch_samples_per_s": result.history[-1]["samples_per_s"],
        "loss": result.history[-1]["loss"],
        "peak_gib": _peak(device),
        "workers": json.loads((result.run_dir / "config.json").read_text())["loader_workers"],
    }


def pipeline_rate(dataset, *, seconds: float) -> float:
    """Images per CPU second of one loader worker's work: read, decode, preprocess, flip."""
    n, c0 = 0, time.thread_time()
    while n < 16 or time.thread_time() - c0 < seconds:
        dataset[(n % len(dataset), bool(n % 2))]
        n += 1
    return n / (time.thread_time() - c0)


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

    os.environ.setdefault("KFACE_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)  # both loops: kface train runs in this process
    device = resolve_device(args.device)
    channels_last = TrainConfig().channels_last if args.channels_last is None else args.channels_last == "on"
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
        report["pipeline_images_per_cpu_s"] = round(pipe, 1)
        print(
            f"{report['images']} images of {report['classes']} identities; {device}, {report['threads']} threads, "
            f"batch {args.batch_size}, {args.precision}, {'channels_last' if channels_last else 'contiguous'}; "
            f"pipeline: {pipe:.0f} images per CPU second (one worker's work on the .rec: read, decode, preprocess)",
            flush=True,
        )
        common = dict(batch_size=args.batch_size, device=device, precision=args.precision, channels_last=channels_last)
        data = {"folder": folder, "rec": rec}
        rows = []
        for net in args.networks:
            row: dict = {"network": net}
            runs = [plain_rate(net, dataset=rec_ds, steps=args.steps, **common)]
            if args.memory_format_check:
                other = {**common, "channels_last": not channels_last}
                row["plain_other_format"] = plain_rate(net, dataset=rec_ds, steps=args.steps, **other)
            for fmt in args.formats:
                row[f"kface_{fmt}"] = kface_rate(
                    net, data=data[fmt], workdir=Path(tmp) / "ws", steps=args.steps, workers=args.workers, **common
                )
            # plain again after the kface loops: their mean brackets load changes on a shared machine
            runs.append(plain_rate(net, dataset=rec_ds, steps=args.steps, **common))
            row["plain"] = {key: sum(r[key] for r in runs) / 2 for key in ("samples_per_s", "samples_per_cpu_s")}
            row["plain"]["runs"] = runs
            if device.type == "cpu" and torch.get_num_threads() > 1:
                row["plain_one_core"] = plain_rate(
                    net, dataset=rec_ds, steps=max(1, args.steps // 2), threads=1, **common
                )
            print(f"  {net}: " + json.dumps(_ratios(report, row)), flush=True)
            rows.append(row)
    report["networks"] = rows
    return report


def _ratios(report: dict, row: dict) -> dict:
    """kface / plain by wall clock and by CPU time of the training thread; pipeline / network."""
    p = row["plain"]
    out = {"plain_samples_per_s": round(p["samples_per_s"], 2)}
    for key in [k for k in row if k.startswith("kface_")]:
        k = row[key]
        out[f"{key}_samples_per_s"] = round(k["samples_per_s"], 2)
        out[f"{key}_ratio_wall"] = round(k["samples_per_s"] / p["samples_per_s"], 3)
        if report["device"] == "cpu":
            out[f"{key}_ratio_cpu"] = round(k["samples_per_cpu_s"] / p["samples_per_cpu_s"], 3)
    if "plain_other_format" in row:
        o = row["plain_other_format"]
        out["other_format_ratio_wall"] = round(o["samples_per_s"] / p["samples_per_s"], 3)
        out["other_format_ratio_cpu"] = round(o["samples_per_cpu_s"] / p["samples_per_cpu_s"], 3)
    if report["device"] == "cpu":
        one = row.get("plain_one_core", p)["samples_per_cpu_s"]
        out["network_samples_per_cpu_s_one_core"] = round(one, 2)
        out["pipeline_vs_network_one_core"] = round(report["pipeline_images_per_cpu_s"] / one, 1)
    row["ratios"] = out
    return out


def print_table(report: dict) -> None:
    rows = [r["ratios"] for r in report["networks"]]
    keys = [k for k in rows[0] if "ratio" in k or k.startswith("pipeline")]
    print("\n" + f"{'network':8s} " + " ".join(f"{k:>{max(8, len(k))}s}" for k in keys))
    for row, r in zip(report["networks"], rows):
        print(f"{row['network']:8s} " + " ".join(f"{r[k]:>{max(8, len(k))}.2f}" for k in keys))
    print(
        "ratio: kface train / plain loop (goal >= 0.9), by wall clock and by CPU time of the training thread "
        "(robust on a shared machine); other_format: plain loop in the other memory format / plain; "
        "pipeline_vs_network_one_core: one worker's decoded images per CPU second / the network's samples per "
        "CPU second on one core (goal >= 4)"
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
    ap.add_argument("--channels-last", choices=["on", "off"], help="default: kface train's default")
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
