"""Model inversion on sample data: are the inverted faces the right people, for another model?

    python benchmarks/bench_invert.py -w WORKSPACE --model-a runs/A --model-b runs/B
    python benchmarks/bench_invert.py --time-only                       # CPU seconds per inversion

One template per val identity (people neither model trained on: the frontal L1/E01/C7 crop) is
embedded with model A and inverted with A, with and without the BatchNorm prior. The inverted
faces are then embedded with model B, trained independently (another seed), and identified
among the val identities' real photos (every val crop but the templates; nearest photo): rank-1,
against chance (1 / identities) and against the templates themselves (the ceiling). ``--picture``
writes original | without prior | with prior for the first identities.

CPU cost: CPU seconds per inversion (DEFAULT_STEPS steps, one face, 1 thread) for
mbf_small, mbf and r50 (random weights: the cost does not depend on them), with ratios against
mbf_small measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

TEMPLATE_CODES = "_L1_E01_C7"  # the frontal, evenly lit, neutral crop of each identity
TIME_STEPS = 3  # steps timed per network (the per-step cost is constant)


def rank1(probes: np.ndarray, probe_ids: list[str], gallery: np.ndarray, gallery_ids: list[str]) -> float:
    """Share of probes whose nearest gallery embedding (cosine) has their identity."""
    nearest = (probes @ gallery.T).argmax(axis=1)
    return float(np.mean([gallery_ids[j] == pid for j, pid in zip(nearest, probe_ids)]))


def picture(rows: list[list[np.ndarray]], labels: list[str], head: list[str]) -> np.ndarray:
    """A grid: one row per identity (original | without prior | with prior), column titles on top."""
    from kface_cli.deploy.draw import blend_label, render_text

    size, gap = rows[0][0].shape[0], 3
    cols = len(rows[0])
    title_h = 22
    out = np.full((title_h + len(rows) * (size + gap), cols * (size + gap) - gap, 3), 255, np.uint8)
    for c, text in enumerate(head):
        mask = render_text(text, 13)
        blend_label(out, mask, c * (size + gap), 0, (90, 90, 90))
    for r, (faces, label) in enumerate(zip(rows, labels)):
        for c, face in enumerate(faces):
            y, x = title_h + r * (size + gap), c * (size + gap)
            out[y : y + size, x : x + size] = face
        blend_label(out, render_text(label, 12), 0, title_h + r * (size + gap) + size - 20, (60, 160, 60))
    return out


def invert_batch(
    model: str, targets: np.ndarray, seeds: list[int], steps: int, prior: bool, bn_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from kface_cli.embedding.loading import load_torch_backbone
    from kface_cli.research.invert import invert_embedding

    torch.set_num_threads(1)
    module = load_torch_backbone(model, purpose="the benchmark")[0]
    inv = invert_embedding(
        module, targets, steps=steps, seeds=seeds[: len(targets)], bn_prior=prior, bn_weight=bn_weight
    )
    return inv.images, inv.cosines


def identification(args: argparse.Namespace) -> None:
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import load_embedder, load_torch_backbone
    from kface_cli.face.imageio import read_image, write_image

    val = args.workdir / "split" / "val"
    ids = sorted(p.name for p in val.iterdir() if p.is_dir())
    templates, photos, photo_ids = [], [], []
    for i in ids:
        files = sorted(val.glob(f"{i}/*.jpg"))
        t = next((f for f in files if TEMPLATE_CODES in f.name), files[0])
        templates.append(read_image(t))
        for f in files:
            if f != t:
                photos.append(read_image(f))
                photo_ids.append(i)
    templates_a = np.stack(templates)
    module, net, size, src = load_torch_backbone(args.model_a, purpose="the benchmark")
    emb_a = embedder_from_module(module, network=net, backend="torch", source=src, embedding_size=size)
    targets = emb_a.embed(templates_a)
    b = load_embedder(args.model_b)
    gallery = b.embed(np.stack(photos))
    print(f"{len(ids)} val identities, {len(photos)} real photos; model A {args.model_a}, model B {args.model_b}")
    print(
        f"chance {1 / len(ids):.0%}; the real templates under B: rank-1 {rank1(b.embed(templates_a), ids, gallery, photo_ids):.0%}"
    )
    # one process per (prior, batch of --batch faces): a shared machine gives each process its share
    jobs = [(prior, lo) for prior in (False, True) for lo in range(0, len(ids), args.batch)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [
            pool.submit(
                invert_batch,
                args.model_a,
                targets[lo : lo + args.batch],
                list(range(lo, lo + args.batch)),
                args.steps,
                prior,
                args.bn_weight,
            )
            for prior, lo in jobs
        ]
        parts = [f.result() for f in done]
    results = {}
    for prior in (False, True):
        images = np.concatenate([imgs for (p, _), (imgs, _) in zip(jobs, parts) if p == prior])
        cosines = np.concatenate([cos for (p, _), (_, cos) in zip(jobs, parts) if p == prior])
        results[prior] = images
        r = rank1(b.embed(images), ids, gallery, photo_ids)
        print(
            f"BN prior {f'on (weight {args.bn_weight:g})' if prior else 'off'}: rank-1 under B {r:.0%}; cosine to target under A {cosines.mean():.3f}"
        )
    print(f"{args.steps} steps, batches of {args.batch} faces, {len(jobs)} processes: {time.perf_counter() - t0:.0f} s")
    if args.picture:
        k = min(args.picture_rows, len(ids))
        rows = [[templates[i], results[False][i], results[True][i]] for i in range(k)]
        write_image(args.picture, picture(rows, ids[:k], ["original", "no prior", "BN prior"]))
        print(f"picture: {args.picture}")


def timing(networks: list[str]) -> None:
    """CPU seconds per step on one thread (process time: on a shared machine, wall time lies)."""
    import torch

    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.models.registry import get_backbone
    from kface_cli.research.invert import DEFAULT_STEPS, invert_embedding
    from kface_cli.train.datasets import ArrayDataset
    from kface_cli.train.loop import recalibrate_batchnorm

    torch.set_num_threads(1)
    faces = ArrayDataset(synthetic_faces(8), [0] * 8, num_classes=1)
    per_step: dict[str, float] = {}
    for net in networks:
        torch.manual_seed(0)
        module = get_backbone(net, embedding_size=512 if net != "mbf_small" else 128)
        # random weights, BatchNorm statistics of real activations: realistic values, no denormals
        recalibrate_batchnorm(module, faces, num_images=8, batch_size=8, device="cpu", seed=0)
        target = np.ones(module(torch.zeros(2, 3, 112, 112)).shape[1], np.float32)
        invert_embedding(module, target, steps=1)  # warm-up
        t0 = time.process_time()
        invert_embedding(module, target, steps=TIME_STEPS)
        per_step[net] = (time.process_time() - t0) / TIME_STEPS
        print(
            f"{net:>9}: {per_step[net]:.3f} CPU s/step, {per_step[net] * DEFAULT_STEPS:.0f} CPU s per inversion "
            f"({DEFAULT_STEPS} steps, one face, 1 thread); {per_step[net] / per_step[networks[0]]:.1f}x {networks[0]}"
        )


def main() -> None:
    from kface_cli.research.invert import BN_WEIGHT, DEFAULT_STEPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workdir", type=Path)
    ap.add_argument("--model-a", help="the model inverted (run folder, checkpoint.pt or backbone.pth)")
    ap.add_argument("--model-b", help="the independently trained model that judges the inversions")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--bn-weight", type=float, default=BN_WEIGHT, help="weight of the BatchNorm prior")
    ap.add_argument("--batch", type=int, default=5, help="faces inverted together (one process per batch and setting)")
    ap.add_argument("--picture", type=Path, help="write original | no prior | BN prior rows here (PNG)")
    ap.add_argument("--picture-rows", type=int, default=4)
    ap.add_argument("--networks", nargs="+", default=["mbf_small", "mbf", "r50"])
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    args = ap.parse_args()
    if not args.time_only:
        if not (args.workdir and args.model_a and args.model_b):
            ap.error("-w, --model-a and --model-b are needed (or --time-only)")
        identification(args)
    if not args.no_time:
        timing(args.networks)


if __name__ == "__main__":
    main()
