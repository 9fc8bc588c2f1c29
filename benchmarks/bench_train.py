"""Training throughput on this CPU: samples/s of backbone + ArcFace head + SGD step per network.

    python benchmarks/bench_train.py                      # mbf_small, mbf, r18, r50
    python benchmarks/bench_train.py --networks mbf r18 --batch-size 32 --threads 2

Each network runs full training steps (forward, ArcFace loss over --classes classes, backward,
gradient clipping, SGD with momentum) on random 112x112 batches. Printed ratios are against
MobileFaceNet ("mbf") and against a plain fp32 matmul measured in the same run (GFLOP/s), so
numbers from different machines can be compared.
"""

from __future__ import annotations

import argparse
import time


def matmul_gflops(seconds: float = 2.0, n: int = 1024) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def train_rate(network: str, *, batch_size: int, classes: int, seconds: float, embedding_size: int = 512) -> float:
    import torch

    from kface_cli.models.heads import HeadConfig, build_head
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    backbone = get_backbone(network, embedding_size=embedding_size)
    head = build_head(classes, embedding_size, HeadConfig(loss="arcface"))
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params + list(head.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch_size, 3, 112, 112) * 2 - 1
    y = torch.randint(0, classes, (batch_size,))

    def step() -> None:
        loss = head(backbone(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    step()  # warm-up (allocations, kernel selection)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=["mbf_small", "mbf", "r18", "r50"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per network (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.classes} classes"
    )
    gflops = matmul_gflops()
    print(f"baseline: fp32 matmul 1024^3 = {gflops:.1f} GFLOP/s")
    rates = {}
    for net in args.networks:
        rates[net] = train_rate(net, batch_size=args.batch_size, classes=args.classes, seconds=args.seconds)
        print(f"  {net:10s} {rates[net]:8.1f} samples/s", flush=True)
    ref = rates.get("mbf")
    print(f"\n{'network':10s} {'samples/s':>10s} {'vs mbf':>8s} {'samples/s per matmul GFLOP/s':>30s}")
    for net, r in rates.items():
        vs = f"{r / ref:8.2f}" if ref else "       -"
        print(f"{net:10s} {r:10.1f} {vs} {r / gflops:30.3f}")


if __name__ == "__main__":
    main()
