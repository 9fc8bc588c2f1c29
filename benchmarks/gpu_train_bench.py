"""GPU training throughput of iresnet50 (fp16, channels_last), as insightface measures it.

    python benchmarks/gpu_train_bench.py                  # ~1-2 minutes on one GPU
    python benchmarks/gpu_train_bench.py --smoke-train    # + a 1-GPU torchrun run of `kface train`

Needs only torch and kface_cli's models (no mediapipe, faiss, OpenCV). Each step is a full
training step: iresnet50 forward with the layers before fc under fp16 autocast, ArcFace
(s=64, m=0.5) over --classes class centres (default 11,680 = MS1MV3's 93,431 ids over 8 GPUs,
insightface's setting), backward with a GradScaler, gradient clipping at 5, SGD momentum 0.9.
insightface reports about 690 samples/s per V100 (5,500/s on 8) for r50 with fp16.

``--smoke-train`` then runs ``torchrun --nproc_per_node 1 -m kface_cli train`` on in-memory
random data for a few steps (NCCL process group, DDP, the whole loop and checkpointing); it needs
kface's CLI dependencies (typer, rich) installed.
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

INSIGHTFACE_V100 = 690.0  # samples/s per V100, r50, fp16 (insightface's reported throughput)


def bench(
    network: str, *, batch_size: int, classes: int, steps: int, warmup: int, fp16: bool, channels_last: bool
) -> dict:
    import torch

    from kface_cli.models.heads import HeadConfig, build_head
    from kface_cli.models.registry import get_backbone

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    backbone = get_backbone(network, embedding_size=512, fp16=fp16).to(device)
    head = build_head(classes, 512, HeadConfig(loss="arcface", scale=64.0, margin=(0.5,))).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": params}, {"params": head.parameters()}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    x = torch.rand(batch_size, 3, 112, 112, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch_size,), device=device)

    def step() -> float:
        loss = head(backbone(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "network": network,
        "batch_size": batch_size,
        "classes": classes,
        "fp16": fp16,
        "channels_last": channels_last,
        "steps": steps,
        "seconds": round(dt, 3),
        "samples_per_s": round(steps * batch_size / dt, 1),
        "final_loss": float(loss),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def smoke_train(network: str, batch_size: int, steps: int) -> dict:
    """1-GPU torchrun of `kface train` on random data; returns what the run wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "smoke.toml"
        cfg.write_text(
            f'[train]\ndata = "synthetic:64x{max(2, batch_size // 16)}"\nnetwork = "{network}"\nbatch_size = {batch_size}\n'
            f'epochs = 2\nmax_steps_per_epoch = {steps}\nprecision = "fp16"\nchannels_last = true\nworkers = 2\n'
            f'val_pairs = "none"\nname = "smoke"\nlog_every = 1\n'
        )
        env = {**os.environ, "KFACE_NO_PROGRESS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "kface_cli",
            "train",
            "--config",
            str(cfg),
            "--workdir",
            tmp,
            "--json",
        ]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        out = {"returncode": res.returncode, "seconds": round(time.perf_counter() - t0, 1)}
        if res.returncode != 0:
            out["stderr_tail"] = res.stderr[-3000:]
            return out
        result = json.loads(res.stdout)
        files = sorted(p.name for p in (Path(tmp) / "runs" / "smoke").iterdir())
        out.update(
            epochs=result["epochs"],
            samples_per_s=round(result["samples_per_s"], 1),
            device=result["device"],
            losses=[round(r["loss"], 3) for r in result["history"]],
            files=files,
        )
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="r50")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=11_680)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--fp32", action="store_true", help="also measure fp32 without channels_last, for comparison")
    ap.add_argument(
        "--smoke-train", action="store_true", help="also run a 1-GPU torchrun of `kface train` on random data"
    )
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: this benchmark is for a GPU machine (see benchmarks/bench_train.py for CPUs)")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}", flush=True)
    runs = [
        bench(
            args.network,
            batch_size=args.batch_size,
            classes=args.classes,
            steps=args.steps,
            warmup=args.warmup,
            fp16=True,
            channels_last=True,
        )
    ]
    if args.fp32:
        runs.append(
            bench(
                args.network,
                batch_size=args.batch_size,
                classes=args.classes,
                steps=args.steps // 2,
                warmup=5,
                fp16=False,
                channels_last=False,
            )
        )
    for r in runs:
        mode = ("fp16" if r["fp16"] else "fp32") + (" channels_last" if r["channels_last"] else "")
        print(
            f"{r['network']} batch {r['batch_size']} {mode}: {r['samples_per_s']:.1f} samples/s "
            f"({r['samples_per_s'] / INSIGHTFACE_V100:.2f}x insightface's {INSIGHTFACE_V100:.0f}/s per V100), "
            f"max memory {r['max_memory_gib']} GiB, loss {r['final_loss']:.2f}",
            flush=True,
        )
    report = {"gpu": torch.cuda.get_device_name(0), "runs": runs}
    if args.smoke_train:
        report["smoke_train"] = smoke_train("r18", 128, 20)
        print("smoke train:", json.dumps(report["smoke_train"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
