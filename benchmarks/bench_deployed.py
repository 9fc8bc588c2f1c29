"""Accuracy as trained vs as deployed, for several training runs on one val split (run by hand).

Each unique val face is aligned once from the annotation (the split's crops) and once from its
source photo by the detector (``split/sources.csv``, as ``kface evaluate --landmarks detect``);
then every model embeds both sets. Prints 10-fold verification accuracy per run: annotation
landmarks (as trained); detector landmarks (as deployed: a face the detector misses is taken
from its annotation, as ``kface evaluate --landmarks detect`` does); the same with those faces'
pairs rejected instead (detector only); the gap; and both on the pairs whose faces the detector
found.

    python benchmarks/bench_deployed.py WORKSPACE RUN_DIR [RUN_DIR ...]

The README's "Accuracy as deployed" table came from this measurement on the demo workspace with
runs trained by ``kface train --config demo_mbf`` on crops from ``kface crop --landmarks auto``
or ``detect``, with and without ``--augment``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kface_cli.embedding import metrics as M
from kface_cli.embedding.loading import load_embedder
from kface_cli.embedding.photos import FaceLoader, PairFaces, embed_pairs, prepare_pairs
from kface_cli.face.detector import ANNOTATION_FALLBACK
from kface_cli.formats.pairs import read_pairs_csv
from kface_cli.prepare.split import read_sources


def _accuracy(embedder, faces: PairFaces, keep: np.ndarray) -> float:
    sub = PairFaces(faces.faces, faces.idx1[keep], faces.idx2[keep], faces.issame[keep], failed=faces.failed)
    dist, same = embed_pairs(embedder, sub)
    return 100 * M.verification_metrics(dist, same)["accuracy"]


def main(workspace: str, *runs: str) -> None:
    split = Path(workspace) / "split"
    pairs = read_pairs_csv(split / "val_pairs.csv")
    trained = prepare_pairs(pairs, loader=FaceLoader("auto"))
    loader = FaceLoader("detect", sources=read_sources(split))
    deployed = prepare_pairs(pairs, loader=loader)
    fell_back = np.array([loader.outcomes[n] == ANNOTATION_FALLBACK for n in deployed.names])
    assert deployed.failed is not None
    missed = deployed.failed | fell_back
    strict = PairFaces(deployed.faces, deployed.idx1, deployed.idx2, deployed.issame, failed=missed)
    everything = np.ones(len(pairs), dtype=bool)
    found = ~(missed[deployed.idx1] | missed[deployed.idx2])
    print(
        f"{len(pairs)} pairs; of {len(deployed.names)} faces the detector missed {int(missed.sum())} "
        f"({int(fell_back.sum())} taken from their annotation), found {len(loader.low_light)} only in low light"
    )
    print(
        f"{'run':40s} {'trained':>8s} {'deployed':>8s} {'gap':>6s} {'det.only':>8s} {'gap':>6s} "
        f"| found pairs ({int(found.sum())}): trained deployed"
    )
    for run in runs:
        embedder = load_embedder(run, flip=True, backend="torch")
        a, d = _accuracy(embedder, trained, everything), _accuracy(embedder, deployed, everything)
        s = _accuracy(embedder, strict, everything)
        fa, fd = _accuracy(embedder, trained, found), _accuracy(embedder, deployed, found)
        print(f"{run:40s} {a:8.2f} {d:8.2f} {a - d:6.2f} {s:8.2f} {a - s:6.2f} | {fa:8.2f} {fd:8.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
