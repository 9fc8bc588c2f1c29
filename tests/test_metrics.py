"""Metrics against hand-computed cases and brute-force loop implementations written here."""

from __future__ import annotations

import numpy as np
import pytest

from kface_cli.embedding import metrics as M
from kface_cli.errors import InputError

# --------------------------------------------------------------------------------------------
# brute-force references (plain loops, written from the protocol's description)
# --------------------------------------------------------------------------------------------


def ref_ten_fold(dist, issame, nfolds=10):
    """insightface's calculate_roc accuracy: loops over folds and thresholds, sklearn-KFold fold sizes."""
    thresholds = np.arange(0, 4, 0.01)
    n = len(dist)
    sizes = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    accs, chosen = [], []
    start = 0

    def accuracy(t, idx):  # as insightface's calculate_accuracy: np.less, float(tp + tn) / size
        predict = np.less(dist[idx], t)
        actual = issame[idx]
        tp = np.sum(predict & actual)
        tn = np.sum(~predict & ~actual)
        return float(tp + tn) / len(idx)

    for size in sizes:
        test = np.array([i for i in range(n) if start <= i < start + size])
        train = np.array([i for i in range(n) if i < start or i >= start + size])
        start += size
        best_t, best_acc = None, -1.0
        for t in thresholds:  # first best on ties (strictly greater replaces)
            a = accuracy(t, train)
            if a > best_acc:
                best_acc, best_t = a, t
        chosen.append(best_t)
        accs.append(accuracy(best_t, test))
    return float(np.mean(accs)), float(np.std(accs)), chosen


def ref_auc(dist, issame):
    pos = [d for d, s in zip(dist, issame) if s]
    neg = [d for d, s in zip(dist, issame) if not s]
    score = 0.0
    for p in pos:
        for q in neg:
            score += 1.0 if q > p else (0.5 if q == p else 0.0)
    return score / (len(pos) * len(neg))


def ref_rates(dist, issame, t, strict):
    tp = fp = npos = nneg = 0
    for d, s in zip(dist, issame):
        accept = d < t if strict else d <= t
        if s:
            npos += 1
            tp += accept
        else:
            nneg += 1
            fp += accept
    return tp / npos, fp / nneg


def ref_best_tar_at_far(dist, issame, far):
    """Max TAR over every threshold (accept iff dist < t) whose FAR <= far."""
    best = 0.0
    for t in sorted(set(dist)) + [np.inf]:
        tar, fa = ref_rates(dist, issame, t, strict=True)
        if fa <= far:
            best = max(best, tar)
    return best


def synthetic(n, rng, sep=0.8, grid=None):
    issame = rng.random(n) < 0.5
    dist = np.where(issame, rng.normal(1.0, 0.35, n), rng.normal(1.0 + sep, 0.35, n)).clip(0, 4)
    if grid:
        dist = np.round(dist / grid) * grid  # many exact ties, many distances exactly on thresholds
    return dist, issame


# --------------------------------------------------------------------------------------------
# 10-fold accuracy
# --------------------------------------------------------------------------------------------


def test_kfold_bounds_match_sklearn_kfold_sizes():
    # sklearn: the first n % k folds get one extra item; in order, no shuffle
    assert M.kfold_bounds(23, 10) == [
        (0, 3),
        (3, 6),
        (6, 9),
        (9, 11),
        (11, 13),
        (13, 15),
        (15, 17),
        (17, 19),
        (19, 21),
        (21, 23),
    ]
    assert M.kfold_bounds(6000, 10)[3] == (1800, 2400)
    with pytest.raises(InputError, match="at least 10 pairs"):
        M.kfold_bounds(9, 10)


@pytest.mark.parametrize(
    "n,grid,seed", [(37, None, 0), (200, 0.01, 1), (203, 0.05, 2), (120, 0.25, 3), (1003, 0.01, 14)]
)
def test_ten_fold_matches_brute_force(n, grid, seed):
    dist, issame = synthetic(n, np.random.default_rng(seed), grid=grid)
    acc, std, chosen = ref_ten_fold(dist, issame)
    got = M.ten_fold_accuracy(dist, issame)
    assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert got["accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert got["fold_thresholds"] == pytest.approx(chosen, abs=1e-12)


def test_ten_fold_single_class_folds():
    # LFW-like ordering in blocks: every fold holds one class only
    rng = np.random.default_rng(4)
    issame = np.array([True] * 50 + [False] * 50)
    dist = np.where(issame, rng.uniform(0.2, 1.6, 100), rng.uniform(1.2, 3.0, 100))
    acc, std, chosen = ref_ten_fold(dist, issame)
    got = M.ten_fold_accuracy(dist, issame)
    assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert got["accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert got["fold_thresholds"] == pytest.approx(chosen, abs=1e-12)


def test_ten_fold_hand_case_and_first_best_on_ties():
    # Every threshold in (0.3, 0.7] separates all pairs; the first best grid value is 0.31
    # (dist < t strictly: 0.30 is not < 0.30).
    dist = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.1, 0.9, 0.2, 0.8])
    issame = np.array([True, False] * 5)
    got = M.ten_fold_accuracy(dist, issame)
    assert got["threshold"] == pytest.approx(0.31)
    assert got["best_accuracy"] == 1.0


def test_ten_fold_held_out_pair_outside_training_range_is_missed():
    dist = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.1, 0.9, 0.2, 0.8])
    issame = np.array([True, False] * 5)
    got = M.ten_fold_accuracy(dist, issame)
    # fold 4 (the 0.3 same pair) picks 0.21 from the others and rejects 0.3: wrong
    assert got["fold_thresholds"][4] == pytest.approx(0.21)
    assert got["fold_accuracies"][4] == 0.0
    assert got["accuracy"] == pytest.approx(0.9)
    assert got["accuracy_std"] == pytest.approx(0.3)


def test_ten_fold_one_fold_trains_on_everything():
    dist = np.array([0.1, 0.9, 0.3, 0.7])
    issame = np.array([True, False, True, False])
    got = M.ten_fold_accuracy(dist, issame, nfolds=1)
    assert got["accuracy"] == 1.0 and got["fold_thresholds"] == [pytest.approx(0.31)]


def test_ten_fold_rejects_bad_input():
    with pytest.raises(InputError, match="labels"):
        M.ten_fold_accuracy(np.zeros(20), np.zeros(19, bool))
    with pytest.raises(InputError, match="NaN"):
        M.ten_fold_accuracy(np.r_[np.zeros(19), np.nan], np.zeros(20, bool))


# --------------------------------------------------------------------------------------------
# ROC, AUC, EER, TAR@FAR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,seed", [(None, 5), (0.1, 6), (0.5, 7)])
def test_auc_matches_pairwise_count_with_ties(grid, seed):
    dist, issame = synthetic(150, np.random.default_rng(seed), grid=grid)
    assert M.auc(dist, issame) == pytest.approx(ref_auc(dist, issame), abs=1e-12)


def test_roc_points_match_loop_rates():
    dist, issame = synthetic(80, np.random.default_rng(8), grid=0.1)
    r = M.roc(dist, issame)
    assert r.far[0] == 0 and r.tar[0] == 0 and r.far[-1] == 1 and r.tar[-1] == 1
    for far, tar, t in zip(r.far[1:], r.tar[1:], r.thresholds[1:]):
        assert (tar, far) == pytest.approx(ref_rates(dist, issame, t, strict=False))


def test_auc_hand_cases():
    assert M.auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool)) == 1.0
    assert M.auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) == 0.0
    assert M.auc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == 0.5


def test_eer_hand_cases():
    assert M.eer(np.array([0.1, 0.3, 0.2, 0.4]), np.array([1, 1, 0, 0], bool)) == (
        pytest.approx(0.5),
        pytest.approx(0.2),
    )
    e, _ = M.eer(np.array([0.1, 0.2, 0.3, 0.25, 0.5, 0.6, 0.7]), np.array([1, 1, 1, 0, 0, 0, 0], bool))
    assert e == pytest.approx(0.25)
    e, _ = M.eer(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool))
    assert e == 0.0


def test_eer_is_between_brute_force_bounds():
    dist, issame = synthetic(300, np.random.default_rng(9))
    frrs_fars = []
    for t in sorted(set(dist)):
        tar, far = ref_rates(dist, issame, t, strict=False)
        frrs_fars.append((1 - tar, far))
    upper = min(max(a, b) for a, b in frrs_fars)
    lower = max(min(a, b) for a, b in frrs_fars)
    e, t = M.eer(dist, issame)
    assert lower - 1e-12 <= e <= upper + 1e-12
    assert dist.min() <= t <= dist.max()


@pytest.mark.parametrize("far", [0.1, 0.05, 0.01])
@pytest.mark.parametrize("grid", [None, 0.05])
def test_tar_at_far_matches_brute_force(far, grid):
    dist, issame = synthetic(400, np.random.default_rng(10), grid=grid)
    tar, t = M.tar_at_far(dist, issame, far)
    assert tar == pytest.approx(ref_best_tar_at_far(dist, issame, far))
    got_tar, got_far = ref_rates(dist, issame, t, strict=True)
    assert got_far <= far and got_tar == pytest.approx(tar)


def test_tar_at_far_needs_enough_negatives():
    rng = np.random.default_rng(11)
    issame = np.r_[np.ones(50, bool), np.zeros(999, bool)]
    dist = rng.uniform(0, 4, issame.size)
    assert M.tar_at_far(dist, issame, 1e-3) is None
    assert "at least 1000 different pairs" in M.far_unsupported_reason(999, 1e-3)
    assert M.tar_at_far(np.r_[dist, 3.9], np.r_[issame, False], 1e-3) is not None
    table = M.tar_far_table(dist, issame)
    assert table["1e-03"]["tar"] is None and "1000" in table["1e-03"]["reason"]
    assert table["1e-01"]["tar"] is not None and table["1e-01"]["achieved_far"] <= 0.1


def test_tar_at_far_hand_case():
    # 10 negatives: FAR 0.1 allows one false accept -> threshold = 2nd smallest negative (0.5)
    neg = np.array([0.4, 0.5, 1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    pos = np.array([0.1, 0.45, 0.5, 0.6])
    dist = np.r_[pos, neg]
    issame = np.r_[np.ones(4, bool), np.zeros(10, bool)]
    tar, t = M.tar_at_far(dist, issame, 0.1)
    assert t == 0.5 and tar == 0.5  # 0.1 and 0.45 accepted; 0.5 is not < 0.5


def test_verification_metrics_keys_and_small_sets():
    dist, issame = synthetic(50, np.random.default_rng(12))
    out = M.verification_metrics(dist, issame)
    for key in ("accuracy", "accuracy_std", "threshold", "auc", "eer", "tar_at_far"):
        assert key in out
    assert out["tar_at_far"]["1e-04"]["tar"] is None
    few = M.verification_metrics(dist[:5], issame[:5])
    assert few["accuracy"] is None and "at least 10" in few["accuracy_note"]
    one_class = M.verification_metrics(np.array([0.1] * 12), np.ones(12, bool))
    assert one_class["auc"] is None and one_class["accuracy"] == 1.0


# --------------------------------------------------------------------------------------------
# identification
# --------------------------------------------------------------------------------------------


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_identification(probe, plabels, gallery, glabels, fpir):
    ids = sorted(set(glabels))
    ranks, known_best, known_r1, unknown_best = [], [], [], []
    for p, lab in zip(probe, plabels):
        per_id = {}
        for g, gl in zip(gallery, glabels):
            d = float(np.sum((p.astype(np.float64) - g) ** 2))
            per_id[gl] = min(per_id.get(gl, np.inf), d)
        if lab in ids:
            true = per_id[lab]
            rank = sum(1 for i in ids if per_id[i] <= true)
            ranks.append(rank)
            known_best.append(true)
            known_r1.append(rank == 1)
        else:
            unknown_best.append(min(per_id.values()))
    # DIR at FPIR: best over thresholds with FPIR <= fpir
    best = 0.0
    for t in sorted(unknown_best) + [np.inf]:
        fp = sum(1 for u in unknown_best if u < t) / len(unknown_best)
        if fp <= fpir:
            hit = sum(1 for b, r in zip(known_best, known_r1) if r and b < t) / len(known_best)
            best = max(best, hit)
    return ranks, best


def test_identification_matches_brute_force():
    rng = np.random.default_rng(13)
    centres = _unit(rng, 8, 16)
    glabels = [f"id{i}" for i in range(6) for _ in range(2)]  # ids 0-5 enrolled, two templates each
    gallery = np.stack([centres[int(lab[2:])] + 0.4 * rng.normal(size=16) for lab in glabels]).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    plabels = [f"id{i % 8}" for i in range(64)]  # ids 6, 7 are unknown
    probe = np.stack([centres[int(lab[2:])] + 0.6 * rng.normal(size=16) for lab in plabels]).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    out = M.identification_metrics(probe, plabels, gallery, glabels, fpirs=(0.1,), max_rank=6)
    ranks, dir_ref = ref_identification(probe, plabels, gallery, glabels, 0.1)
    assert out["n_known"] == 48 and out["n_unknown"] == 16 and out["n_identities"] == 6
    assert out["rank1"] == pytest.approx(np.mean(np.array(ranks) <= 1))
    assert out["rank5"] == pytest.approx(np.mean(np.array(ranks) <= 5))
    assert out["cmc"] == pytest.approx([np.mean(np.array(ranks) <= k) for k in range(1, 7)])
    assert out["cmc"][-1] == 1.0
    assert out["dir_at_fpir"]["1e-01"]["dir"] == pytest.approx(dir_ref)
    assert [r for r in out["probe_ranks"] if r > 0] == ranks


def test_identification_ties_count_against_the_probe_and_fpir_needs_unknowns():
    gallery = np.array([[1, 0], [1, 0]], np.float32)  # two identities with identical templates
    out = M.identification_metrics(np.array([[1, 0]], np.float32), ["a"], gallery, ["a", "b"], fpirs=(0.1,))
    assert out["rank1"] == 0.0 and out["cmc"] == [0.0, 1.0]
    assert out["dir_at_fpir"]["1e-01"]["dir"] is None
    assert "unknown probes" in out["dir_at_fpir"]["1e-01"]["reason"]


def test_cmc_hand_case():
    assert M.cmc(np.array([1, 2, 2, 5]), 5).tolist() == [0.25, 0.75, 0.75, 0.75, 1.0]


def test_missed_probes_are_misses_and_fpir_is_judged_by_people_too():
    gallery = np.array([[1, 0, 0], [0, 1, 0]], np.float32)  # a, b enrolled
    probes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]] + [[0.6, 0, 0.8]] * 9, np.float32)
    labels = ["a", "b"] + ["s1"] + ["s2"] * 9  # 10 strangers' probes, of 2 people
    found = M.identification_metrics(probes, labels, gallery, ["a", "b"], fpirs=(0.1,))
    assert found["rank1"] == 1.0 and found["n_known"] == 2 and found["n_unknown"] == 10
    missed = M.identification_metrics(probes, labels, gallery, ["a", "b"], fpirs=(0.1,), missed_labels=["a", "a", "s3"])
    # two probes of a without a face: misses (rank-1 2/4, DIR never above 2/4); s3's is out of FPIR
    assert missed["n_known"] == 4 and missed["n_known_no_face"] == 2 and missed["rank1"] == 0.5
    assert missed["n_unknown"] == 10 and missed["n_unknown_no_face"] == 1 and missed["n_probes"] == 15
    assert missed["cmc"] == [0.5, 0.5]
    at = missed["dir_at_fpir"]["1e-01"]
    assert at["dir"] <= 0.5 and at["measurable_by_people"] is False
    assert "needs at least 10 distinct strangers for FPIR 0.1, have 2" in at["people_reason"]
    assert missed["probe_ranks"][-3:] == [3, 3, 0]  # beyond every rank; a stranger: 0
    assert M.strangers_unsupported_reason(10, 0.1) is None
    point = M.identification_at_threshold(
        probes, labels, gallery, ["a", "b"], at["threshold"], missed_labels=["a", "a", "s3"]
    )
    assert point["dir"] == pytest.approx(at["dir"]) and point["fpir"] == pytest.approx(at["achieved_fpir"])
