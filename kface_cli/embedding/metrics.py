"""Verification and identification metrics, vectorised numpy (no torch, no sklearn).

Conventions used everywhere in kface:

- ``dist`` is the **squared L2 distance** between unit-length embeddings (0..4; ``2 - 2*cos``);
  smaller means more similar.
- A pair is **accepted** ("same person") when ``dist < threshold`` (strictly), exactly like
  insightface's ``np.less(dist, threshold)`` and like ``kface identify`` (a face is unknown when its
  best distance is ``>= threshold``). Every threshold this module returns follows that rule.
- ``issame`` is a boolean array, True for genuine (same-identity) pairs.

Verification (:func:`verification_metrics` bundles them):

- :func:`ten_fold_accuracy`: insightface's LFW protocol, bit-for-bit: pairs in order, split like
  ``sklearn.model_selection.KFold(n_splits=10, shuffle=False)`` (the first ``n % 10`` folds get one
  extra pair), for each fold the threshold from ``0.00, 0.01, ..., 3.99`` with the best accuracy on
  the other nine folds (the first one on ties, as ``np.argmax``), scored on the held-out fold;
  mean and (population, ``ddof=0``) std of the ten fold accuracies.
- :func:`roc` (every distinct distance is a point), :func:`auc` (area under it; ties count half),
  :func:`eer` (where false accepts = false rejects, linearly interpolated on the ROC),
  :func:`tar_at_far` (exact, not grid-interpolated: the largest threshold whose false-accept rate on
  the different pairs is <= FAR, and the TAR there). A FAR is only *measurable* with at least
  ``1/FAR`` different pairs; below that :func:`tar_at_far` returns None and
  :func:`far_unsupported_reason` says why.

Identification (:func:`identification_metrics`): closed-set CMC / rank-k over known probes, and
open-set DIR (TPIR) at a given FPIR, where probes whose identity is not in the gallery are the
unknowns.

Everything is O(n log n) in the number of pairs: 1M pairs take well under a second or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kface_cli.errors import InputError

#: insightface's threshold grid for the 10-fold protocol: 0.00, 0.01, ..., 3.99 (400 values).
INSIGHTFACE_THRESHOLDS = np.arange(0, 4, 0.01)
#: FAR values reported for TAR@FAR.
DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
#: FPIR values reported for open-set DIR@FPIR.
DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2)
#: Ranks reported for closed-set identification.
DEFAULT_RANKS: tuple[int, ...] = (1, 5)


def far_key(far: float) -> str:
    """The JSON key for a FAR/FPIR value: ``1e-3`` -> ``"1e-03"`` (stable, sortable)."""
    return f"{far:.0e}"


# ============================================================================================
# Input checks
# ============================================================================================


def _check(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    issame = np.asarray(issame).reshape(-1)
    if issame.dtype != bool:
        issame = issame.astype(bool)
    if dist.shape != issame.shape:
        raise InputError(
            f"{dist.size} distances but {issame.size} same/different labels", hint="Pass one label per pair."
        )
    if dist.size and not np.isfinite(dist).all():
        bad = int((~np.isfinite(dist)).sum())
        raise InputError(
            f"{bad} pair distance(s) are NaN or infinite",
            hint="The model produced invalid embeddings; check its weights.",
        )
    return dist, issame


def _require_both_classes(issame: np.ndarray, what: str) -> None:
    n_same = int(issame.sum())
    if n_same == 0 or n_same == issame.size:
        raise InputError(
            f"{what} needs both same-person and different-person pairs; got {n_same} same and {issame.size - n_same} different",
            hint="Use a pair list with both kinds (kface split writes balanced val_pairs.csv).",
        )


# ============================================================================================
# 10-fold accuracy (insightface protocol)
# ============================================================================================


def kfold_bounds(n: int, nfolds: int) -> list[tuple[int, int]]:
    """[start, end) of each test fold, exactly like sklearn ``KFold(nfolds, shuffle=False)``.

    The first ``n % nfolds`` folds hold ``n // nfolds + 1`` items, the rest ``n // nfolds``.
    """
    if nfolds < 1:
        raise InputError(f"nfolds must be >= 1, got {nfolds}")
    if nfolds > 1 and n < nfolds:
        raise InputError(
            f"{nfolds}-fold accuracy needs at least {nfolds} pairs, got {n}", hint="Use more pairs or fewer folds."
        )
    sizes = np.full(nfolds, n // nfolds, dtype=np.int64)
    sizes[: n % nfolds] += 1
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def _correct_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of correctly classified pairs at each threshold (accept iff ``dist < t``). Shape (T,)."""
    pos = np.sort(dist[issame])
    neg = np.sort(dist[~issame])
    tp = np.searchsorted(pos, thresholds, side="left")  # positives with dist < t
    fp = np.searchsorted(neg, thresholds, side="left")  # negatives with dist < t
    return tp + (neg.size - fp)


def ten_fold_accuracy(
    dist: np.ndarray,
    issame: np.ndarray,
    *,
    nfolds: int = 10,
    thresholds: np.ndarray = INSIGHTFACE_THRESHOLDS,
) -> dict:
    """insightface's k-fold verification accuracy.

    Returns ``accuracy`` (mean over folds), ``accuracy_std`` (``np.std``, ddof=0),
    ``threshold`` (the grid threshold with the best accuracy on *all* pairs: the one to deploy),
    ``best_accuracy`` (accuracy at that threshold; optimistic, since chosen on the same pairs),
    ``fold_accuracies`` and ``fold_thresholds`` (the threshold each fold used, chosen on the other
    folds). With ``nfolds=1`` the single fold trains and tests on all pairs (insightface's LFold).

    Integer counts replace insightface's float accuracies when picking the argmax: dividing by the
    same pair count cannot change which threshold is first-best, so results are identical.
    """
    dist, issame = _check(dist, issame)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n = dist.size
    if n == 0:
        raise InputError("no pairs to evaluate")
    bounds = kfold_bounds(n, nfolds)
    # (F, T) correct counts per fold and threshold
    per_fold = np.stack([_correct_counts(dist[s:e], issame[s:e], thresholds) for s, e in bounds])
    total = per_fold.sum(axis=0)  # (T,)
    sizes = np.array([e - s for s, e in bounds], dtype=np.int64)
    if nfolds == 1:
        train = per_fold  # LFold: train on the test set itself
    else:
        train = total[None, :] - per_fold  # (F, T) correct counts on the other folds
    best = np.argmax(train, axis=1)  # first best on ties, like insightface
    fold_acc = per_fold[np.arange(len(bounds)), best] / sizes
    overall = int(np.argmax(total))
    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "threshold": float(thresholds[overall]),
        "best_accuracy": float(total[overall] / n),
        "fold_accuracies": [float(a) for a in fold_acc],
        "fold_thresholds": [float(thresholds[b]) for b in best],
    }


def accuracy_at(dist: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified correctly with ``dist < threshold`` = same."""
    dist, issame = _check(dist, issame)
    if dist.size == 0:
        return float("nan")
    return float(np.mean((dist < threshold) == issame))


# ============================================================================================
# ROC, AUC, EER, TAR@FAR
# ============================================================================================


@dataclass(frozen=True)
class Roc:
    """ROC points, FAR ascending. Point i accepts pairs with ``dist <= thresholds[i]``.

    The first point (FAR=TAR=0) has threshold ``-inf`` (accept nothing).
    """

    far: np.ndarray  # (K,) false accept rate (FPR)
    tar: np.ndarray  # (K,) true accept rate (TPR)
    thresholds: np.ndarray  # (K,)


def roc(dist: np.ndarray, issame: np.ndarray) -> Roc:
    """The full ROC: one point per distinct distance (ties move TAR and FAR together)."""
    dist, issame = _check(dist, issame)
    _require_both_classes(issame, "A ROC curve")
    order = np.argsort(dist, kind="stable")
    d = dist[order]
    s = issame[order]
    tp = np.cumsum(s)
    fp = np.cumsum(~s)
    # keep the last index of each run of equal distances
    last = np.r_[d[1:] != d[:-1], True]
    n_pos, n_neg = tp[-1], fp[-1]
    far = np.r_[0.0, fp[last] / n_neg]
    tar = np.r_[0.0, tp[last] / n_pos]
    thr = np.r_[-np.inf, d[last]]
    return Roc(far=far, tar=tar, thresholds=thr)


def auc(dist: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC (trapezoids): P(different-pair distance > same-pair distance), ties half."""
    r = roc(dist, issame)
    return float(np.sum(np.diff(r.far) * (r.tar[1:] + r.tar[:-1]) / 2.0))


def eer(dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: where FAR = FRR (1 - TAR) on the ROC.

    The crossing is linearly interpolated between the two ROC points around it; the threshold is
    interpolated the same way (the first ROC point's -inf threshold is taken as the smallest distance).
    Returns ``(eer, threshold)``.
    """
    r = roc(dist, issame)
    frr = 1.0 - r.tar
    diff = frr - r.far  # decreasing from 1 to -1
    i = int(np.argmax(diff <= 0))  # first point where FRR <= FAR (exists: last point has diff = -1)
    thr = r.thresholds.copy()
    thr[0] = r.thresholds[1]
    if diff[i] == 0 or i == 0:
        return float(r.far[i]), float(thr[i])
    d0, d1 = diff[i - 1], diff[i]  # d0 > 0 >= d1
    w = d0 / (d0 - d1)
    e = r.far[i - 1] + w * (r.far[i] - r.far[i - 1])
    t = thr[i - 1] + w * (thr[i] - thr[i - 1])
    return float(e), float(t)


def min_negatives(far: float) -> int:
    """How many different pairs are needed to measure a FAR: ``ceil(1/FAR)``."""
    return int(np.ceil(1.0 / far - 1e-9))


def far_unsupported_reason(n_neg: int, far: float) -> str | None:
    """None when ``n_neg`` different pairs can measure ``far``; else a sentence saying why not."""
    if not 0 < far < 1:
        return f"FAR must be between 0 and 1, got {far}"
    need = min_negatives(far)
    if n_neg < need:
        return f"needs at least {need} different pairs for FAR {far:g}, have {n_neg}"
    return None


def _threshold_at_rate(neg_sorted: np.ndarray, rate: float) -> float:
    """Largest threshold t with ``#(neg < t) <= floor(rate * n_neg)`` (accept iff dist < t).

    t is the (k+1)-th smallest negative distance, k = floor(rate * n). Ties at t are rejected, so
    the achieved rate is <= ``rate``.
    """
    k = int(np.floor(rate * neg_sorted.size + 1e-9))
    if k >= neg_sorted.size:
        return float(np.inf)
    return float(neg_sorted[k])


def tar_at_far(dist: np.ndarray, issame: np.ndarray, far: float) -> tuple[float, float] | None:
    """``(tar, threshold)``: the largest threshold whose FAR is <= ``far``, and the TAR it gives.

    Accept iff ``dist < threshold``. Returns None when there are fewer than ``1/far`` different
    pairs (the FAR cannot be measured; :func:`far_unsupported_reason` says so) or no same pairs.
    """
    dist, issame = _check(dist, issame)
    neg = np.sort(dist[~issame])
    pos = dist[issame]
    if pos.size == 0 or far_unsupported_reason(neg.size, far) is not None:
        return None
    t = _threshold_at_rate(neg, far)
    return float(np.mean(pos < t)), t


def tar_far_table(dist: np.ndarray, issame: np.ndarray, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, dict]:
    """``{"1e-03": {"far": 0.001, "tar": .., "threshold": .., "achieved_far": ..} | {.., "tar": None, "reason": ..}}``."""
    dist, issame = _check(dist, issame)
    neg = np.sort(dist[~issame])
    out: dict[str, dict] = {}
    for far in fars:
        reason = far_unsupported_reason(neg.size, far)
        if reason is None and not issame.any():
            reason = "no same pairs"
        if reason is not None:
            out[far_key(far)] = {"far": far, "tar": None, "threshold": None, "reason": reason}
            continue
        res = tar_at_far(dist, issame, far)
        assert res is not None, "tar_at_far must be defined when the FAR is measurable"
        tar, t = res
        out[far_key(far)] = {"far": far, "tar": tar, "threshold": t, "achieved_far": float(np.mean(neg < t))}
    return out


def verification_metrics(
    dist: np.ndarray,
    issame: np.ndarray,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    nfolds: int = 10,
) -> dict:
    """Every verification metric at once.

    Keys: ``n_pairs, n_same, n_diff, accuracy, accuracy_std, threshold, best_accuracy,
    fold_accuracies, fold_thresholds, auc, eer, eer_threshold, tar_at_far`` (see
    :func:`tar_far_table`). With fewer than ``nfolds`` pairs the 10-fold keys are None and
    ``accuracy_note`` says why; with one class only, AUC/EER are None.
    """
    dist, issame = _check(dist, issame)
    n_same = int(issame.sum())
    out: dict = {"n_pairs": int(dist.size), "n_same": n_same, "n_diff": int(dist.size - n_same)}
    if dist.size >= max(nfolds, 1):
        out.update(ten_fold_accuracy(dist, issame, nfolds=nfolds))
    else:
        out.update(
            accuracy=None, accuracy_std=None, threshold=None, best_accuracy=None, fold_accuracies=[], fold_thresholds=[]
        )
        out["accuracy_note"] = f"{nfolds}-fold accuracy needs at least {nfolds} pairs, have {dist.size}"
    if 0 < n_same < dist.size:
        out["auc"] = auc(dist, issame)
        out["eer"], out["eer_threshold"] = eer(dist, issame)
    else:
        out["auc"] = out["eer"] = out["eer_threshold"] = None
    out["tar_at_far"] = tar_far_table(dist, issame, fars)
    return out


# ============================================================================================
# Identification: closed-set CMC, open-set DIR@FPIR
# ============================================================================================


#: Probes per block when computing probe-to-gallery distances (bounds memory to block x gallery).
PROBE_BLOCK = 2048


def identity_distances(
    probe_emb: np.ndarray, gallery_emb: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared-L2 distance of each probe to each gallery *identity* (min over its templates).

    Returns ``(dist (P, I), identities (I,))`` with identities sorted. Probes are processed in
    blocks of :data:`PROBE_BLOCK`, so memory stays ``block x gallery`` whatever the probe count.
    """
    probe_emb = np.asarray(probe_emb, dtype=np.float32)
    gallery_emb = np.asarray(gallery_emb, dtype=np.float32)
    gallery_labels = np.asarray(gallery_labels)
    assert probe_emb.ndim == 2 and gallery_emb.ndim == 2 and probe_emb.shape[1] == gallery_emb.shape[1], (
        "embeddings must be (N, D) with equal D"
    )
    ids, inv = np.unique(gallery_labels, return_inverse=True)
    order = np.argsort(inv, kind="stable")  # gallery columns grouped by identity
    g = gallery_emb[order]  # (G, D)
    starts = np.searchsorted(inv[order], np.arange(ids.size))  # first column of each identity
    g_sq = (g.astype(np.float64) ** 2).sum(1)  # (G,)
    out = np.empty((probe_emb.shape[0], ids.size), dtype=np.float64)
    for s in range(0, probe_emb.shape[0], PROBE_BLOCK):
        p = probe_emb[s : s + PROBE_BLOCK].astype(np.float64)  # (B, D)
        # (B, G) squared L2 = |p|^2 + |g|^2 - 2 p.g, clipped (rounding can go slightly negative)
        d = np.maximum((p**2).sum(1)[:, None] + g_sq[None, :] - 2.0 * (p @ g.T.astype(np.float64)), 0.0)
        out[s : s + PROBE_BLOCK] = np.minimum.reduceat(d, starts, axis=1)  # (B, I) min per identity
    return out, ids


def ranks_of_truth(dist: np.ndarray, truth_col: np.ndarray) -> np.ndarray:
    """1-based rank of the true identity for each probe: 1 + #other identities at distance <= true one.

    Ties count against the probe (pessimistic), so a constant model does not score rank-1.
    """
    dist = np.asarray(dist, dtype=np.float64)
    p = np.arange(dist.shape[0])
    true_d = dist[p, truth_col]
    return (dist <= true_d[:, None]).sum(axis=1)  # includes the truth itself -> 1-based


def cmc(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """CMC curve: ``cmc[k-1]`` = fraction of probes whose true identity is within rank k."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return np.full(max_rank, np.nan)
    counts = np.bincount(np.minimum(ranks, max_rank + 1), minlength=max_rank + 2)[1 : max_rank + 1]
    return np.cumsum(counts) / ranks.size


def dir_at_fpir(
    known_best: np.ndarray, known_rank1: np.ndarray, unknown_best: np.ndarray, fpir: float
) -> tuple[float, float] | None:
    """Open-set DIR (TPIR) at an FPIR: ``(dir, threshold)``, or None when not measurable.

    ``known_best``: distance of each known probe to its *true* identity; ``known_rank1``: whether
    that identity is the closest; ``unknown_best``: distance of each unknown probe to its closest
    gallery identity. The threshold is the largest with ``FPIR = #(unknown_best < t)/n <= fpir``;
    DIR = fraction of known probes identified at rank 1 with distance < t.
    Needs at least ``1/fpir`` unknown probes.
    """
    unknown = np.sort(np.asarray(unknown_best, dtype=np.float64))
    known_best = np.asarray(known_best, dtype=np.float64)
    if known_best.size == 0 or far_unsupported_reason(unknown.size, fpir) is not None:
        return None
    t = _threshold_at_rate(unknown, fpir)
    return float(np.mean(np.asarray(known_rank1, bool) & (known_best < t))), t


def strangers_unsupported_reason(n_strangers: int, fpir: float) -> str | None:
    """None when ``n_strangers`` distinct people not enrolled can measure ``fpir``; else why not.

    Probes of one stranger are not independent: 58 images of 2 strangers say little about how
    often a third is given a name. An FPIR of f is read at the level of people when at least
    ``ceil(1/f)`` distinct strangers are among the probes (the same rule as for images)."""
    need = min_negatives(fpir)
    if n_strangers < need:
        return f"needs at least {need} distinct strangers for FPIR {fpir:g}, have {n_strangers}"
    return None


def identification_metrics(
    probe_emb: np.ndarray,
    probe_labels: Sequence,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence,
    *,
    ranks: Sequence[int] = DEFAULT_RANKS,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    max_rank: int = 20,
    missed_labels: Sequence = (),
) -> dict:
    """Closed-set rank-k/CMC over probes whose identity is enrolled; open-set DIR@FPIR using the
    others (identities absent from the gallery) as unknowns.

    ``missed_labels``: the identities of probes in which no face was found. An enrolled person's
    missed probe is a miss (counted in rank-k, CMC and DIR, never identified), as a deployed system
    fails on it; a stranger's missed probe is given no name, but it is left out of FPIR (a detector
    failure must not make FPIR look better) and counted in ``n_unknown_no_face``.

    Returns ``n_probes`` (with the missed ones), ``n_known`` (with the missed ones), ``n_unknown``
    (strangers' probes with a face: FPIR's denominator), ``n_strangers`` (distinct people not
    enrolled among them), ``n_known_no_face, n_unknown_no_face, n_identities, rank1, rank5 (rank<k>
    for each k), cmc (list, rank 1..min(max_rank, identities)), dir_at_fpir {"1e-01": {dir,
    threshold, achieved_fpir, measurable_by_people[, people_reason]} | {dir: None, reason}},
    probe_ranks`` (rank per probe with a face, then per missed probe; 0 for strangers, identities+1
    for a missed enrolled person).
    An FPIR is measured when there are ``ceil(1/FPIR)`` strangers' images; whether there are as many
    distinct strangers is reported beside it (:func:`strangers_unsupported_reason`).
    """
    probe_labels = np.asarray([str(x) for x in probe_labels])
    gallery_labels = np.asarray([str(x) for x in gallery_labels])
    missed = np.asarray([str(x) for x in missed_labels])
    if gallery_labels.size == 0:
        raise InputError("the gallery is empty", hint="Enroll at least one identity.")
    dist, ids = identity_distances(probe_emb, gallery_emb, gallery_labels)
    col = np.searchsorted(ids, probe_labels)
    col_c = np.minimum(col, ids.size - 1)
    known = ids[col_c] == probe_labels
    missed_known = np.isin(missed, ids)
    n_missed_known = int(missed_known.sum())
    never = ids.size + 1  # the rank of a missed probe: beyond every rank
    max_rank = min(max_rank, ids.size)
    ranks_found = ranks_of_truth(dist[known], col_c[known])
    ranks_known = np.concatenate([ranks_found, np.full(n_missed_known, never, dtype=ranks_found.dtype)])
    out: dict = {
        "n_probes": int(probe_labels.size + missed.size),
        "n_known": int(known.sum()) + n_missed_known,
        "n_unknown": int((~known).sum()),
        "n_strangers": int(np.unique(probe_labels[~known]).size),
        "n_known_no_face": n_missed_known,
        "n_unknown_no_face": int(missed.size - n_missed_known),
        "n_identities": int(ids.size),
    }
    for k in ranks:
        out[f"rank{k}"] = float(np.mean(ranks_known <= k)) if ranks_known.size else None
    out["cmc"] = [float(x) for x in cmc(ranks_known, max_rank)] if ranks_known.size else []
    known_best = np.concatenate(
        [dist[known, col_c[known]] if known.any() else np.zeros(0), np.full(n_missed_known, np.inf)]
    )
    unknown_best = dist[~known].min(axis=1) if (~known).any() else np.zeros(0)
    out["dir_at_fpir"] = {}
    for f in fpirs:
        res = dir_at_fpir(known_best, ranks_known == 1, unknown_best, f)
        if res is None:
            reason = far_unsupported_reason(unknown_best.size, f) or "no known probes"
            reason = reason.replace("different pairs", "unknown probes (identities not in the gallery)").replace(
                "FAR", "FPIR"
            )
            out["dir_at_fpir"][far_key(f)] = {"fpir": f, "dir": None, "threshold": None, "reason": reason}
        else:
            people = strangers_unsupported_reason(out["n_strangers"], f)
            out["dir_at_fpir"][far_key(f)] = {
                "fpir": f,
                "dir": res[0],
                "threshold": res[1],
                "achieved_fpir": float(np.mean(unknown_best < res[1])),
                "measurable_by_people": people is None,
                **({"people_reason": people} if people else {}),
            }
    probe_ranks = np.zeros(probe_labels.size, dtype=np.int64)
    probe_ranks[known] = ranks_found
    missed_ranks = np.where(missed_known, never, 0).astype(np.int64)
    out["probe_ranks"] = probe_ranks.tolist() + missed_ranks.tolist()
    return out


def identification_at_threshold(
    probe_emb: np.ndarray,
    probe_labels: Sequence,
    gallery_emb: np.ndarray,
    gallery_labels: Sequence,
    threshold: float,
    *,
    missed_labels: Sequence = (),
) -> dict:
    """The operating point of a fixed 1:N threshold (e.g. one calibrated on other people):
    ``dir`` (known probes named correctly, distance < threshold; missed probes count as misses),
    ``fpir`` (strangers' probes given a name), with the counts they rest on."""
    probe_labels = np.asarray([str(x) for x in probe_labels])
    gallery_labels = np.asarray([str(x) for x in gallery_labels])
    missed = np.asarray([str(x) for x in missed_labels])
    dist, ids = identity_distances(probe_emb, gallery_emb, gallery_labels)
    col_c = np.minimum(np.searchsorted(ids, probe_labels), ids.size - 1)
    known = ids[col_c] == probe_labels
    n_missed_known = int(np.isin(missed, ids).sum())
    hits = 0
    if known.any():
        d = dist[known]
        rank1 = ranks_of_truth(d, col_c[known]) == 1
        hits = int((rank1 & (d[np.arange(d.shape[0]), col_c[known]] < threshold)).sum())
    n_known = int(known.sum()) + n_missed_known
    unknown_best = dist[~known].min(axis=1) if (~known).any() else np.zeros(0)
    return {
        "threshold": float(threshold),
        "dir": hits / n_known if n_known else None,
        "fpir": float(np.mean(unknown_best < threshold)) if unknown_best.size else None,
        "n_known": n_known,
        "n_unknown": int(unknown_best.size),
        "n_strangers": int(np.unique(probe_labels[~known]).size),
        "n_known_no_face": n_missed_known,
    }
