"""Embedding throughput: images/s and fraction of this CPU's measured float32 matmul peak.

For MobileFaceNet (mbf), iresnet18 and iresnet50 at batch 1 and 32, torch (channels-last,
inference mode) against ONNX Runtime (the same weights exported in memory, as kface's "auto"
backend does). The peak is measured in the same run with a large float32 matmul, so the fraction
is comparable across machines. FLOPs per image are counted from the network's conv/linear layers.

    python benchmarks/bench_embed.py                 # all threads
    python benchmarks/bench_embed.py --threads 1 --seconds 2 --networks mbf r18
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def count_flops(module, size: int = 112) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass on one 112x112 image (conv + linear layers)."""
    import torch

    total = 0.0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2.0 * out.numel() * k

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2.0 * out.numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    with torch.inference_mode():
        module(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


def matmul_peak(seconds: float, n: int = 2048) -> float:
    """Best float32 GFLOP/s of an n x n matmul (torch / MKL or OpenBLAS)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def throughput(fn, batch: np.ndarray, seconds: float) -> float:
    """Images per second of ``fn(batch)``: best of repeated timed runs after a warm-up."""
    fn(batch)
    fn(batch)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    runs = 0
    while time.perf_counter() < t_end or runs < 3:
        t = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return batch.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="+", default=["mbf", "r18", "r50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from kface_cli.embedding.embedder import onnx_bytes_from_module
    from kface_cli.models.registry import get_backbone

    torch.set_num_threads(args.threads)
    peak_start = matmul_peak(args.seconds)
    rows = []  # (network, flops, batch, backend, images/s, ORT/torch)
    rng = np.random.default_rng(0)
    for name in args.networks:
        torch.manual_seed(0)
        net = get_backbone(name, 512)
        net.train()
        with torch.no_grad():  # calibrate BatchNorm so that activations stay finite (random weights)
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None
            net(torch.randn(8, 3, 112, 112))
        net.eval()
        flops = count_flops(net)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_bytes_from_module(net), sess_options=opts, providers=["CPUExecutionProvider"])
        net_cl = net.to(memory_format=torch.channels_last)

        def run_torch(x: np.ndarray, net_cl=net_cl) -> np.ndarray:
            with torch.inference_mode():
                return net_cl(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

        def run_ort(x: np.ndarray, sess=sess) -> np.ndarray:
            return sess.run(None, {"data": x})[0]

        for bs in args.batches:
            x = rng.uniform(-1, 1, (bs, 3, 112, 112)).astype(np.float32)
            results = {"torch": throughput(run_torch, x, args.seconds), "onnx": throughput(run_ort, x, args.seconds)}
            for backend, ips in results.items():
                ratio = f"{results['onnx'] / results['torch']:.2f}x" if backend == "onnx" else ""
                rows.append((name, flops, bs, backend, ips, ratio))
                print(f"  {name} batch {bs} {backend}: {ips:.1f} img/s", flush=True)

    # the peak is measured before and after: on a shared machine the best of both is the closest
    # to the hardware's (a busy neighbour lowers it; fractions above 100% would reveal that)
    peak_end = matmul_peak(args.seconds)
    peak = max(peak_start, peak_end)
    print(
        f"\nCPU: {os.cpu_count()} logical cores, {args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    print(
        f"float32 matmul peak (2048^3 best of {args.seconds:.0f} s, before / after): {peak_start:.1f} / {peak_end:.1f} GFLOP/s\n"
    )
    header = f"{'network':8} {'GFLOPs/img':>10} {'batch':>5} {'backend':>8} {'img/s':>8} {'GFLOP/s':>8} {'of peak':>8} {'ORT/torch':>9}"
    print(header)
    print("-" * len(header))
    for name, flops, bs, backend, ips, ratio in rows:
        gflops = ips * flops / 1e9
        print(
            f"{name:8} {flops / 1e9:10.3f} {bs:5d} {backend:>8} {ips:8.1f} {gflops:8.1f} {gflops / peak:8.1%} {ratio:>9}"
        )


if __name__ == "__main__":
    main()
