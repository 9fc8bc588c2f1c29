"""GPU check of issue 12, as one short prepared script: iresnet50, fp16, channels_last, batch 128
and 256, `kface train`'s loop against a plain torch loop on a synthetic train.rec, plus torchrun
over NCCL.

    python benchmarks/gpu_train_bench.py                 # ~5 min on one H200; JSON to $OUT when set
    python benchmarks/gpu_train_bench.py --batch-sizes 128 --steps 20 --images 20000

1. Writes a synthetic ``train.rec`` of ``--images`` face-like JPEGs (10 per identity).
2. For each batch size: the plain loop and :func:`kface_cli.train.loop.train` (benchmarks/
   bench_train.py's ``plain_rate`` and ``kface_rate``: the same network, head, optimizer,
   precision and memory format), samples/s, their ratio (goal >= 0.9) and peak GPU memory.
   Reference: insightface reports ~740 samples/s per GPU for r50 (8 GPUs, batch 512 each);
   the goal on one H200 is >= 2,000 samples/s.
3. CUDA's sync debug mode over 40 steps of kface's loop: how often the host waits.
4. ``torchrun --nproc_per_node 1 -m kface_cli train`` on the same ``.rec`` (the launch path),
   and a torchrun NCCL check: process group, all_reduce, a few DDP steps of r50 in fp16.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import kface_rate, make_data, plain_rate  # noqa: E402

GOAL_SAMPLES_PER_S = 2000.0
INSIGHTFACE_PER_GPU = 740.0

NCCL_CHECK = """
import os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from kface_cli.models.registry import get_backbone
dist.init_process_group("nccl")
dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(dev)
t = torch.ones(1, device=dev)
dist.all_reduce(t)
net = DDP(get_backbone("r50", 512, fp16=True).to(dev), device_ids=[dev.index])
opt = torch.optim.SGD(net.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cuda")
x = torch.randn(64, 3, 112, 112, device=dev)
for _ in range(5):
    loss = net(x).float().pow(2).mean()
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
torch.cuda.synchronize()
print("NCCL_OK", dist.get_backend(), float(t), float(loss))
dist.destroy_process_group()
"""


def torchrun(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="r50")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per loop (kface: 2 epochs of this many)")
    ap.add_argument("--images", type=int, default=20_000)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: this script is for a GPU machine (benchmarks/bench_train.py runs on CPUs)")
    device = torch.device("cuda")
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    print(f"{report['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    env = {**os.environ, "KFACE_NO_PROGRESS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    os.environ["KFACE_NO_PROGRESS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, rec = make_data(Path(tmp), images=args.images, source=None)
        print(f"synthetic train.rec of {args.images} images in {time.perf_counter() - t0:.0f} s", flush=True)
        from kface_cli.train.datasets import open_training_data

        rec_ds = open_training_data(rec, flip=False)
        for b in args.batch_sizes:
            common = dict(batch_size=b, steps=args.steps, device=device, precision="fp16", channels_last=True)
            plain = plain_rate(args.network, dataset=rec_ds, **common)
            kface = kface_rate(args.network, data=rec, workdir=Path(tmp) / "ws", workers=None, **common)
            run = {
                "batch_size": b,
                "plain_samples_per_s": round(plain["samples_per_s"], 1),
                "kface_samples_per_s": round(kface["samples_per_s"], 1),
                "ratio": round(kface["samples_per_s"] / plain["samples_per_s"], 3),
                "plain_peak_gib": plain["peak_gib"],
                "kface_peak_gib": kface["peak_gib"],
                "kface_workers": kface["workers"],
                "vs_goal_2000": round(kface["samples_per_s"] / GOAL_SAMPLES_PER_S, 2),
                "vs_insightface_740": round(kface["samples_per_s"] / INSIGHTFACE_PER_GPU, 2),
            }
            report["runs"].append(run)
            print(json.dumps(run), flush=True)

        # host syncs inside the steady state: CUDA's sync debug mode warns at each one
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                kface_rate(
                    args.network,
                    data=rec,
                    workdir=Path(tmp) / "ws",
                    workers=None,
                    batch_size=128,
                    steps=20,
                    device=device,
                    precision="fp16",
                    channels_last=True,
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        report["host_syncs"] = {"steps": 40, "count": len(syncs), "first": syncs[:3]}
        print("host syncs in 40 steps (incl. set-up, checkpoints; fp16 GradScaler syncs once a step):", len(syncs))

        t0 = time.perf_counter()
        res = torchrun(
            ["-m", "kface_cli", "train", "--data", str(rec), "--network", args.network, "--precision", "fp16"]
            + ["--batch-size", "128", "--epochs", "2", "--max-steps-per-epoch", "20", "--val-pairs", "none"]
            + ["--bn-recalibration", "0", "--device", "cuda", "--workdir", str(Path(tmp) / "ws"), "--json"],
            env,
            timeout=300,
        )
        tr = {"returncode": res.returncode, "seconds": round(time.perf_counter() - t0, 1)}
        if res.returncode == 0:
            out = json.loads(res.stdout)
            tr.update(samples_per_s=round(out["samples_per_s"], 1), epochs=out["epochs"], device=out["device"])
        else:
            tr["stderr_tail"] = res.stderr[-2000:]
        report["torchrun_kface_train"] = tr
        print("torchrun kface train:", json.dumps(tr), flush=True)

        check = Path(tmp) / "nccl_check.py"
        check.write_text(NCCL_CHECK)
        res = torchrun([str(check)], env, timeout=300)
        report["nccl"] = {
            "ok": res.returncode == 0 and "NCCL_OK nccl" in res.stdout,
            "stdout_tail": res.stdout[-300:],
            "stderr_tail": res.stderr[-1500:] if res.returncode else "",
        }
        print("NCCL:", json.dumps(report["nccl"]), flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_train_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
