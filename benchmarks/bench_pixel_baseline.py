"""How well do raw pixels verify identities on synthetic K-Face? (the "is it a real problem" check)

For every identity zip under ROOT/<Res>_Resolution/, the tutorial selection (S001 x L1,L3 x
E01-E03 x C6-C9) is aligned to 112x112 with the annotation's 5 points (kface's norm_crop), each
crop is flattened, and pairs are compared by cosine similarity (squared L2 of the unit vectors).
All same-identity pairs and as many random different-identity pairs are scored with the
insightface 10-fold protocol. Chance is 50%; a face descriptor worth training should do much
better than this baseline.

    python benchmarks/bench_pixel_baseline.py [ROOT] [--res Middle] [--ids 40]

Without ROOT it uses sample_data/ when present, else generates --ids identities in a temp folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from itertools import combinations
from pathlib import Path

import numpy as np

from kface_cli.dataset import codes as kc
from kface_cli.dataset.annotation import parse_annotation
from kface_cli.embedding.metrics import ten_fold_accuracy
from kface_cli.face.align import norm_crop
from kface_cli.face.imageio import decode_image


def load_crops(root: Path, res: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 112*112*3) float32 flattened aligned crops and (N,) identity labels."""
    feats, labels = [], []
    zips = sorted((root / f"{res}_Resolution").glob("*.zip"))
    if not zips:
        sys.exit(f"no zips under {root / f'{res}_Resolution'}")
    for label, zpath in enumerate(zips):
        with zipfile.ZipFile(zpath) as zf:
            for acc in kc.TUTORIAL_SELECTION["acc"]:
                for light in kc.TUTORIAL_SELECTION["light"]:
                    for expr in kc.TUTORIAL_SELECTION["expr"]:
                        for cam in kc.TUTORIAL_SELECTION["cam"]:
                            img = decode_image(zf.read(kc.member_path(acc, light, expr, cam)))
                            ann = parse_annotation(zf.read(kc.member_path(acc, light, expr, cam, ".txt")).decode())
                            feats.append(norm_crop(img, ann.points5).astype(np.float32).ravel())
                            labels.append(label)
    return np.stack(feats), np.array(labels)


def pixel_accuracy(feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    same = [(i, j) for i, j in combinations(range(len(labels)), 2) if labels[i] == labels[j]]
    rng = np.random.default_rng(seed)
    diff: list[tuple[int, int]] = []
    while len(diff) < len(same):
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            diff.append((int(i), int(j)))
    pairs = np.array(same + diff)
    issame = np.array([True] * len(same) + [False] * len(diff))
    order = rng.permutation(len(pairs))  # folds must mix same and different pairs
    pairs, issame = pairs[order], issame[order]
    dist = ((unit[pairs[:, 0]] - unit[pairs[:, 1]]) ** 2).sum(1)
    result = ten_fold_accuracy(dist, issame, thresholds=np.arange(0, 4, 0.0005))
    result["pairs"] = len(pairs)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path)
    ap.add_argument("--res", default="Middle")
    ap.add_argument("--ids", type=int, default=40)
    args = ap.parse_args()
    root = args.root
    tmp = None
    if root is None:
        default = Path(__file__).resolve().parent.parent / "sample_data"
        if (default / f"{args.res}_Resolution").is_dir():
            root = default
        else:
            from kface_cli.synth.generator import generate_sample_data

            tmp = tempfile.TemporaryDirectory()
            root = Path(tmp.name)
            generate_sample_data(root, n_ids=args.ids, resolutions=(args.res,), grid_preset="tutorial")
    feats, labels = load_crops(root, args.res)
    r = pixel_accuracy(feats, labels)
    print(f"{len(set(labels.tolist()))} identities, {len(labels)} aligned crops, {r['pairs']} pairs ({root})")
    print(
        f"raw-pixel cosine, 10-fold verification accuracy: {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} (chance 0.5)"
    )


if __name__ == "__main__":
    main()
