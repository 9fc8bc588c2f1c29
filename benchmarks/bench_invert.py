"""Model inversion on sample data: are the inverted faces the right people, for another model?

    python benchmarks/bench_invert.py -w WORKSPACE --make-models            # train A and the judge B
    python benchmarks/bench_invert.py -w WORKSPACE --model-a runs/A --model-b runs/B
    python benchmarks/bench_invert.py --time-only                       # CPU seconds per inversion

WORKSPACE: after ``kface split --test-ids N`` (three identity-disjoint parts). Model A is inverted;
model B judges. B must be of another architecture than A and trained on other identities (so an
inversion cannot pass by exploiting what the two models share: adversarial transfer between
siblings); neither may have trained on the people inverted. ``--make-models`` trains such a pair:
the training identities are split into two disjoint halves (alternate IDs), A (``--network-a``,
default mbf_small) learns one half and B (``--network-b``, default r18, an iresnet) the other,
both with ``--config demo_mbf``. The script checks the pair (networks, training identities) and
prints what it found.

1. Choosing (``--dev-part``, default val): one template per identity (the frontal L1/E01/C7 crop)
   is embedded with A and inverted with A at each ``--bn-weights`` weight of the BatchNorm prior
   (0: no prior); B identifies the inverted faces among the part's other real photos (nearest
   photo). The weight with the highest rank-1 is chosen (ties: the first listed).
2. Reporting (``--report-part``, default test, identities no choice saw): the chosen weight, the
   default weight and no prior; rank-1 under B with a 95% Wilson interval, against chance and the
   real templates (the ceiling), and the difference prior minus no prior with a 95% bootstrap
   interval over identities: the prior's effect is "not reproduced" unless that interval is
   above zero.

``--picture`` writes original | without prior | with prior for the first reported identities.

CPU cost: CPU seconds per inversion (DEFAULT_STEPS steps, one face, 1 thread) for
mbf_small, mbf and r50 (random weights: the cost does not depend on them), with ratios against
mbf_small measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import wilson  # noqa: E402
from runs import finished  # noqa: E402

TEMPLATE_CODES = "_L1_E01_C7"  # the frontal, evenly lit, neutral crop of each identity
TIME_STEPS = 3  # steps timed per network (the per-step cost is constant)


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


BOOTSTRAP = 2000


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b (per identity 0/1 outcomes) with a 95% bootstrap interval over identities."""
    rng = np.random.default_rng(seed)
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = rng.integers(0, d.size, (BOOTSTRAP, d.size))
    means = np.sort(d[idx].mean(axis=1))
    return float(d.mean()), float(means[int(0.025 * BOOTSTRAP)]), float(means[int(0.975 * BOOTSTRAP) - 1])


def hits(probes: np.ndarray, probe_ids: list[str], gallery: np.ndarray, gallery_ids: list[str]) -> np.ndarray:
    """Per probe: whether its nearest gallery embedding (cosine) has its identity."""
    nearest = (probes @ gallery.T).argmax(axis=1)
    return np.array([gallery_ids[j] == pid for j, pid in zip(nearest, probe_ids)])


def run_identities(run_dir: Path) -> tuple[str, set[str]]:
    """(network, training identities) of a run folder, from its config.json and training folder."""
    cfg = json.loads((run_dir / "config.json").read_text())
    data = Path(cfg["data_source"])
    return cfg["network"], {p.name for p in data.iterdir() if p.is_dir()} if data.is_dir() else set()


def check_pair(model_a: Path, model_b: Path, people: set[str]) -> list[str]:
    """Refuse a judge that shares A's architecture or identities, or models trained on ``people``."""
    net_a, ids_a = run_identities(model_a)
    net_b, ids_b = run_identities(model_b)
    problems = []
    if net_a == net_b:
        problems.append(f"A and B are both {net_a}: the judge must be another architecture")
    if ids_a & ids_b:
        problems.append(f"A and B share {len(ids_a & ids_b)} training identities: the judge must learn other people")
    for name, ids in (("A", ids_a), ("B", ids_b)):
        if ids & people:
            problems.append(f"{name} trained on {len(ids & people)} of the people inverted")
    if problems:
        raise SystemExit("bench_invert: " + "; ".join(problems))
    return [
        f"A: {net_a} on {len(ids_a)} identities ({model_a})",
        f"B (judge): {net_b} on {len(ids_b)} other identities ({model_b})",
        f"the people inverted: {len(people)}, in neither model's training data",
    ]


def part_faces(part: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[str]]:
    """(ids, one template per id, the other photos, their ids) of a split part."""
    from kface_cli.face.imageio import read_image

    ids = sorted(p.name for p in part.iterdir() if p.is_dir())
    templates, photos, photo_ids = [], [], []
    for i in ids:
        files = sorted(part.glob(f"{i}/*.jpg"))
        t = next((f for f in files if TEMPLATE_CODES in f.name), files[0])
        templates.append(read_image(t))
        for f in files:
            if f != t:
                photos.append(read_image(f))
                photo_ids.append(i)
    return ids, templates, photos, photo_ids


def invert_all(args: argparse.Namespace, targets: np.ndarray, weights: list[float]) -> dict[float, tuple]:
    """{weight: (images, cosines)}: every target inverted with A at each prior weight (0: none)."""
    jobs = [(w, lo) for w in weights for lo in range(0, len(targets), args.batch)]
    with ProcessPoolExecutor(min(len(jobs), args.processes), mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [
            pool.submit(
                invert_batch,
                str(args.model_a),
                targets[lo : lo + args.batch],
                list(range(lo, lo + args.batch)),
                args.steps,
                w > 0,
                w,
            )
            for w, lo in jobs
        ]
        parts = [f.result() for f in done]
    out = {}
    for w in weights:
        imgs = np.concatenate([im for (jw, _), (im, _) in zip(jobs, parts) if jw == w])
        cos = np.concatenate([c for (jw, _), (_, c) in zip(jobs, parts) if jw == w])
        out[w] = (imgs, cos)
    return out


def make_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """Train A and the judge B on two disjoint halves of the training identities (see module doc)."""
    import os

    from kface_cli.train.loop import train_from_options

    ws = args.workdir.resolve()
    train = ws / "split" / "train"
    ids = sorted(p.name for p in train.iterdir() if p.is_dir())
    halves = {"a": ids[0::2], "b": ids[1::2]}
    runs = {}
    for half, network in (("a", args.network_a), ("b", args.network_b)):
        folder = ws / "bench_invert" / f"half-{half}"
        if not folder.is_dir():
            for i in halves[half]:
                (folder / i).mkdir(parents=True, exist_ok=True)
                for f in sorted((train / i).iterdir()):
                    os.link(f, folder / i / f.name)
        name = f"bench-invert-{half}-{network}-e{args.epochs}"
        if not finished(ws / "runs" / name):  # never an interrupted run's best epoch
            import shutil

            shutil.rmtree(ws / "runs" / name, ignore_errors=True)
            opts = {"workdir": str(ws), "data": str(folder), "network": network, "name": name, "epochs": args.epochs}
            opts["augment"] = "jitter"  # pinned (the recipe of the README's earlier numbers), not the default
            train_from_options("demo_mbf", opts)
        runs[half] = ws / "runs" / name
    return runs["a"], runs["b"]


def identification(args: argparse.Namespace) -> None:
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import load_embedder, load_torch_backbone
    from kface_cli.face.imageio import write_image

    split = args.workdir / "split"
    dev = part_faces(split / args.dev_part)
    rep = part_faces(split / args.report_part)
    for line in check_pair(Path(args.model_a), Path(args.model_b), set(dev[0]) | set(rep[0])):
        print(line)
    module, net, size, src = load_torch_backbone(args.model_a, purpose="the benchmark")
    emb_a = embedder_from_module(module, network=net, backend="torch", source=src, embedding_size=size)
    b = load_embedder(args.model_b)

    # 1. choose the prior's weight on the development identities
    ids, templates, photos, photo_ids = dev
    gallery = b.embed(np.stack(photos))
    weights = sorted(set(args.bn_weights))
    inverted = invert_all(args, emb_a.embed(np.stack(templates)), weights)
    dev_rank1 = {w: float(hits(b.embed(inverted[w][0]), ids, gallery, photo_ids).mean()) for w in weights}
    chosen = max(weights, key=lambda w: (dev_rank1[w], -weights.index(w)))
    print(f"\nCHOOSING on the {args.dev_part} identities ({len(ids)}; {len(photos)} real photos), {args.steps} steps:")
    for w in weights:
        print(f"  BN prior weight {w:g}{' (none)' if w == 0 else ''}: rank-1 under B {dev_rank1[w]:.0%}")
    print(f"  chosen: weight {chosen:g} (highest rank-1 under B on {args.dev_part})")

    # 2. report on identities no choice saw
    ids, templates, photos, photo_ids = rep
    gallery = b.embed(np.stack(photos))
    from kface_cli.research.invert import BN_WEIGHT

    report_weights = sorted({0.0, chosen, BN_WEIGHT})
    t0 = time.perf_counter()
    inverted = invert_all(args, emb_a.embed(np.stack(templates)), report_weights)
    ceiling = hits(b.embed(np.stack(templates)), ids, gallery, photo_ids)
    print(
        f"\nREPORTED on the {args.report_part} identities ({len(ids)}, seen by no choice; {len(photos)} real photos):"
        f" chance {1 / len(ids):.0%}; the real templates under B {ceiling.mean():.0%}"
    )
    outcome = {}
    for w in report_weights:
        h = hits(b.embed(inverted[w][0]), ids, gallery, photo_ids)
        outcome[w] = h
        lo, hi = wilson(int(h.sum()), h.size)
        label = (
            "no prior"
            if w == 0
            else f"BN prior {w:g}"
            + (" (chosen on dev)" if w == chosen else "")
            + (" (kface's default)" if w == BN_WEIGHT else "")
        )
        print(
            f"  {label}: rank-1 under B {int(h.sum())}/{h.size} = {h.mean():.0%} (95% Wilson {lo:.0%}-{hi:.0%}); "
            f"cosine to target under A {inverted[w][1].mean():.3f}"
        )
    for w in report_weights:
        if w == 0:
            continue
        d, lo, hi = paired_difference(outcome[w], outcome[0.0])
        verdict = "reproduced" if lo > 0 else "not reproduced"
        print(
            f"  prior {w:g} minus no prior: {d:+.0%} (95% bootstrap over identities {lo:+.0%} to {hi:+.0%}): the prior's gain {verdict}"
        )
    print(f"{args.steps} steps, batches of {args.batch} faces: {time.perf_counter() - t0:.0f} s")
    if args.picture:
        k = min(args.picture_rows, len(ids))
        rows = [[templates[i], inverted[0.0][0][i], inverted[chosen if chosen else BN_WEIGHT][0][i]] for i in range(k)]
        write_image(args.picture, picture(rows, ids[:k], ["original", "no prior", "BN prior"]))
        print(f"picture: {args.picture}")


def timing(networks: list[str]) -> None:
    """CPU seconds per step on one thread (process time: on a shared machine, wall time lies)."""
    import torch

    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.models.registry import get_backbone
    from kface_cli.research.invert import DEFAULT_STEPS, invert_embedding
    from kface_cli.train.datasets import ArrayDataset
    from kface_cli.train.validation import recalibrate_batchnorm

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
    ap.add_argument("--model-a", help="the model inverted (a run folder)")
    ap.add_argument("--model-b", help="the judge: another architecture, trained on other identities (a run folder)")
    ap.add_argument("--make-models", action="store_true", help="train A and B on disjoint halves of split/train")
    ap.add_argument("--network-a", default="mbf_small")
    ap.add_argument("--network-b", default="r18")
    ap.add_argument("--epochs", type=int, default=12, help="--make-models: epochs of each model")
    ap.add_argument("--dev-part", default="val", help="split part the prior's weight is chosen on")
    ap.add_argument("--report-part", default="test", help="split part that reports (identities no choice saw)")
    ap.add_argument("--bn-weights", type=float, nargs="+", default=[0.0, BN_WEIGHT, 0.05], help="0: no prior")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch", type=int, default=5, help="faces inverted together (one process per batch and weight)")
    ap.add_argument("--processes", type=int, default=4, help="inversion processes at once")
    ap.add_argument("--picture", type=Path, help="write original | no prior | BN prior rows here (PNG)")
    ap.add_argument("--picture-rows", type=int, default=4)
    ap.add_argument("--networks", nargs="+", default=["mbf_small", "mbf", "r50"])
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    args = ap.parse_args()
    if not args.time_only:
        if not args.workdir:
            ap.error("-w is needed (or --time-only)")
        if args.make_models:
            args.model_a, args.model_b = make_models(args)
        if not (args.model_a and args.model_b):
            ap.error("--model-a and --model-b are needed (or --make-models)")
        identification(args)
    if not args.no_time:
        timing(args.networks)


if __name__ == "__main__":
    main()
