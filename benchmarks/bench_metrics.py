"""Time kface's vectorised verification metrics on 1M pairs against loop baselines.

Run by hand: ``python benchmarks/bench_metrics.py [--pairs 1000000]``. Prints the time of
``verification_metrics`` (10-fold accuracy, ROC, AUC, EER, TAR at 4 FARs) and of the 10-fold
accuracy alone, then two baselines measured in the same run on a subset and extrapolated linearly
(both are O(pairs x thresholds)):

- insightface style: ``calculate_roc``'s loops over folds and the 400 thresholds, numpy per threshold;
- brute force: plain Python loops over pairs (the reference used in tests/test_metrics.py).

It also checks the 10-fold accuracy equals the insightface-style result on the subset.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kface_cli.embedding import metrics as M


def insightface_style_accuracy(dist: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> tuple[float, float]:
    thresholds = np.arange(0, 4, 0.01)
    n = dist.size
    idx = np.arange(n)
    accs = []
    for s, e in M.kfold_bounds(n, nfolds):
        test = idx[s:e]
        train = np.r_[idx[:s], idx[e:]]

        def acc(t, sel):
            predict = np.less(dist[sel], t)
            return float(np.sum(predict == issame[sel])) / sel.size

        best = int(np.argmax([acc(t, train) for t in thresholds]))
        accs.append(acc(thresholds[best], test))
    return float(np.mean(accs)), float(np.std(accs))


def brute_force_accuracy(dist: list, issame: list, nfolds: int = 10) -> float:
    thresholds = [i * 0.01 for i in range(400)]
    n = len(dist)
    accs = []
    for s, e in M.kfold_bounds(n, nfolds):

        def acc(t, rng):
            return sum(1 for i in rng if (dist[i] < t) == issame[i]) / len(rng)

        train = [i for i in range(n) if i < s or i >= e]
        best_t, best = 0.0, -1.0
        for t in thresholds:
            a = acc(t, train)
            if a > best:
                best, best_t = a, t
        accs.append(acc(best_t, range(s, e)))
    return sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--subset", type=int, default=100_000, help="pairs for the insightface-style baseline")
    ap.add_argument("--brute-subset", type=int, default=2_000, help="pairs for the pure-Python baseline")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    issame = rng.random(args.pairs) < 0.5
    dist = np.where(issame, rng.normal(1.0, 0.35, args.pairs), rng.normal(1.8, 0.35, args.pairs)).clip(0, 4)

    t = time.perf_counter()
    ours = M.verification_metrics(dist, issame)
    t_all = time.perf_counter() - t
    t = time.perf_counter()
    M.ten_fold_accuracy(dist, issame)
    t_acc = time.perf_counter() - t
    print(f"pairs: {args.pairs:,}")
    print(
        f"kface verification_metrics (all metrics): {t_all:.3f} s   accuracy {ours['accuracy']:.5f} +- {ours['accuracy_std']:.5f}"
    )
    print(f"kface ten_fold_accuracy alone:            {t_acc:.3f} s")

    n = args.subset
    t = time.perf_counter()
    ref_acc, ref_std = insightface_style_accuracy(dist[:n], issame[:n])
    t_ref = (time.perf_counter() - t) * args.pairs / n
    mine = M.ten_fold_accuracy(dist[:n], issame[:n])
    assert (mine["accuracy"], mine["accuracy_std"]) == (ref_acc, ref_std), (
        "10-fold accuracy differs from the insightface-style loop"
    )
    print(
        f"insightface-style loops on {n:,} pairs, extrapolated to {args.pairs:,}: {t_ref:.1f} s  "
        f"-> kface 10-fold is {t_ref / t_acc:.0f}x faster (same result on the subset)"
    )

    b = args.brute_subset
    t = time.perf_counter()
    brute_force_accuracy(dist[:b].tolist(), issame[:b].tolist())
    t_brute = (time.perf_counter() - t) * args.pairs / b
    print(
        f"pure-Python loops on {b:,} pairs, extrapolated to {args.pairs:,}: {t_brute:.0f} s  "
        f"-> kface 10-fold is {t_brute / t_acc:.0f}x faster"
    )


if __name__ == "__main__":
    main()
