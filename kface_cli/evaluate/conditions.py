"""K-Face breakdown: every metric per light, expression, camera angle and accessory.

**How a pair is assigned to a condition** (verification): a pair counts under value V of a factor
(e.g. light L7) when **either** of its two images has that value. A pair of an L1 image and an L7
image therefore counts once under L1 and once under L7; an L7-L7 pair counts once under L7. So the
L7 row answers "how well do we do on pairs that involve a dark L7 photo?". Rows of one factor
overlap and do not sum to the total.

**Identification**: a probe counts under the values of its own image (the gallery side is fixed).

Codes come from the pair list (``val_pairs.csv`` columns ``light1, light2, ...``) or, when absent,
from kface face file names ``<ID>_<S>_<L>_<E>_<C>.jpg`` or the raw layout ``<ID>/S001/L1/E01/C7.jpg``. Pairs without codes are left out of
the breakdown (LFW and ``.bin`` files have none).

Each row holds, for its subset: ``n_pairs, n_same, n_diff``, ``accuracy_at_threshold`` (accuracy
at the threshold chosen on *all* pairs: the one you would deploy; comparable across rows),
``tar_at_threshold`` / ``far_at_threshold``, and the same metrics as the whole set
(``accuracy`` 10-fold, ``auc``, ``eer``, ``tar_at_far``) where the subset is large enough.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.embedding import metrics as M

#: Factors of the breakdown, in display order: (codes key, label).
FACTORS: tuple[tuple[str, str], ...] = (
    ("light", "light"),
    ("expr", "expression"),
    ("cam", "camera"),
    ("acc", "accessory"),
)


def codes_of(path: str | Path, given: dict | None = None) -> dict[str, str]:
    """The K-Face codes of one image: ``given`` (from a pairs CSV) if it has them, else parsed from
    the file name (``<ID>_<S>_<L>_<E>_<C>.jpg``) or the raw layout (``<ID>/S001/L1/E01/C7.jpg``)."""
    if given and any(k in given for k, _ in FACTORS):
        return dict(given)
    from kface_cli.dataset.codes import parse_face_filename
    from kface_cli.errors import KFaceError

    path = Path(path)
    try:
        return parse_face_filename(path.name)
    except KFaceError:
        pass
    # raw K-Face layout: .../<ID>/S001/L1/E01/C7.jpg
    parts = path.parts[-5:]
    if len(parts) == 5:
        try:
            return parse_face_filename("_".join([*parts[:4], path.stem]) + path.suffix)
        except KFaceError:
            pass
    return {}


def pair_codes(pairs: Sequence[Any]) -> tuple[list[dict], list[dict]]:
    """Codes of both sides of each ``Pair`` (CSV columns first, then file names)."""
    c1 = [codes_of(p.path1, getattr(p, "codes1", None)) for p in pairs]
    c2 = [codes_of(p.path2, getattr(p, "codes2", None)) for p in pairs]
    return c1, c2


def code_sort_key(code: str) -> tuple[str, int]:
    m = re.match(r"([A-Za-z]*)(\d+)", code)
    return (m.group(1), int(m.group(2))) if m else (code, 0)


def describe_code(factor: str, code: str) -> str:
    """Human description of a code (``0 lux, all lamps (dark)``), or "" when unknown."""
    try:
        from kface_cli.dataset.codes import describe

        return describe(factor, code)
    except Exception:  # unknown code or codes table unavailable: the code alone is shown
        return ""


def _row(dist: np.ndarray, issame: np.ndarray, threshold: float | None, fars: Sequence[float]) -> dict:
    row = M.verification_metrics(dist, issame, fars=fars)
    for k in ("fold_accuracies", "fold_thresholds"):
        row.pop(k, None)
    if threshold is not None:
        accept = dist < threshold
        row["accuracy_at_threshold"] = M.accuracy_at(dist, issame, threshold)
        row["tar_at_threshold"] = float(np.mean(accept[issame])) if issame.any() else None
        row["far_at_threshold"] = float(np.mean(accept[~issame])) if (~issame).any() else None
    return row


def verification_breakdown(
    dist: np.ndarray,
    issame: np.ndarray,
    codes1: Sequence[dict],
    codes2: Sequence[dict],
    *,
    threshold: float | None,
    fars: Sequence[float] = M.DEFAULT_FARS,
) -> dict[str, dict[str, dict]]:
    """``{factor: {code: row}}`` where a pair is counted under every value either image has."""
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    assert len(codes1) == len(codes2) == dist.size, "one codes dict per side per pair"
    out: dict[str, dict[str, dict]] = {}
    for key, _label in FACTORS:
        v1 = np.array([c.get(key, "") for c in codes1], dtype=object)
        v2 = np.array([c.get(key, "") for c in codes2], dtype=object)
        values = sorted({v for v in np.concatenate([v1, v2]) if v}, key=code_sort_key)
        if not values:
            continue
        rows = {}
        for v in values:
            mask = (v1 == v) | (v2 == v)
            row = _row(dist[mask], issame[mask], threshold, fars)
            row["description"] = describe_code(key, v)
            rows[v] = row
        out[key] = rows
    return out


def identification_breakdown(probe_codes: Sequence[dict], probe_ranks: Sequence[int]) -> dict[str, dict[str, dict]]:
    """``{factor: {code: {n_probes, rank1, rank5}}}`` over known probes (rank > 0), by the probe's codes."""
    ranks = np.asarray(probe_ranks)
    out: dict[str, dict[str, dict]] = {}
    for key, _label in FACTORS:
        vals = np.array([c.get(key, "") for c in probe_codes], dtype=object)
        values = sorted({v for v in vals if v}, key=code_sort_key)
        rows = {}
        for v in values:
            r = ranks[(vals == v) & (ranks > 0)]
            if r.size:
                rows[v] = {
                    "n_probes": int(r.size),
                    "rank1": float(np.mean(r <= 1)),
                    "rank5": float(np.mean(r <= 5)),
                    "description": describe_code(key, v),
                }
        if rows:
            out[key] = rows
    return out


def merge_breakdowns(verification: dict, identification: dict) -> dict:
    """One ``per_condition`` dict: verification rows, with ``rank1/rank5/n_probes`` added per code."""
    merged: dict[str, dict[str, dict]] = {k: {c: dict(r) for c, r in rows.items()} for k, rows in verification.items()}
    for key, rows in identification.items():
        target = merged.setdefault(key, {})
        for code, r in rows.items():
            target.setdefault(code, {"description": r["description"]}).update(r)
        merged[key] = dict(sorted(target.items(), key=lambda kv: code_sort_key(kv[0])))
    return merged
