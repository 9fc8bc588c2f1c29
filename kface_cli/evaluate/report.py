"""The evaluation report: ``reports/<name>/`` with ``metrics.json`` and PNG plots, plus table rows.

Files (written atomically; plots with matplotlib's Agg backend, no display needed):

- ``metrics.json``: the summary printed by ``kface evaluate --json``;
- ``roc.png``: TAR against FAR, log FAR axis, with the TAR@FAR points and the EER point marked;
- ``distances.png``: histograms of same-person and different-person squared-L2 distances with the
  best-accuracy threshold (and the calibrated FAR one, when calibrated on these distances);
- ``cmc.png``: the CMC curve (identification rate by rank), y axis zoomed to the curve, when
  identification ran;
- ``conditions.png``: accuracy at the overall threshold per light / expression / camera / accessory,
  one bar per condition named by its K-Face description, with its value and pair count, on an axis
  that starts just below the worst condition (so 92% and 94% look different).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.embedding import metrics as M

METRICS_FILE = "metrics.json"


def write_report(evaluation: Any, folder: str | Path) -> Path:
    """Write the JSON summary and every plot that applies; returns the folder."""
    from kface_cli.atomic import write_text
    from kface_cli.console import to_json

    folder = Path(folder)
    from kface_cli.atomic import ensure_dir

    ensure_dir(folder)
    summary = dict(evaluation.summary)
    plots: list[str] = []
    import matplotlib

    matplotlib.use("Agg", force=True)
    if (
        evaluation.dist is not None
        and evaluation.issame is not None
        and 0 < int(np.sum(evaluation.issame)) < evaluation.issame.size
    ):
        plot_roc(evaluation.dist, evaluation.issame, summary, folder / "roc.png")
        plot_distances(evaluation.dist, evaluation.issame, summary, folder / "distances.png")
        plots += ["roc.png", "distances.png"]
    if summary.get("cmc"):
        plot_cmc(summary["cmc"], folder / "cmc.png")
        plots.append("cmc.png")
    if summary.get("per_condition") and any(
        "accuracy_at_threshold" in r for rows in summary["per_condition"].values() for r in rows.values()
    ):
        plot_conditions(summary["per_condition"], folder / "conditions.png", overall=summary.get("best_accuracy"))
        plots.append("conditions.png")
    summary["plots"] = plots
    write_text(folder / METRICS_FILE, to_json(summary) + "\n")
    return folder


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from kface_cli.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _zoomed_floor(values: list[float], margin: float = 0.1) -> float:
    """A lower axis limit that shows the differences between ``values`` (all in 0..1): a little
    below the smallest, rounded down to a step of 0.05, never below 0."""
    low = min(values) if values else 0.0
    span = max(1.0 - low, 0.02)
    return max(0.0, float(np.floor((low - margin * span) * 20) / 20))


def plot_roc(dist: np.ndarray, issame: np.ndarray, summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    r = M.roc(dist, issame)
    n_neg = int((~np.asarray(issame, bool)).sum())
    keep = r.far > 0
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(r.far[keep], r.tar[keep], lw=1.8, label=f"AUC {summary.get('auc') or 0:.4f}")
    for key, item in (summary.get("tar_at_far") or {}).items():
        if item.get("tar") is not None:
            ax.plot([item["far"]], [item["tar"]], "o", ms=5, color="tab:blue")
            ax.annotate(
                f"TAR {100 * item['tar']:.1f}% @ FAR {key}",
                (item["far"], item["tar"]),
                textcoords="offset points",
                xytext=(5, -12),
                fontsize=8,
            )
    eer = summary.get("eer")
    if eer:  # FAR = FRR = EER: the point (EER, 1 - EER) of the curve
        ax.plot(
            [eer],
            [1 - eer],
            "D",
            ms=7,
            color="tab:red",
            label=f"EER {100 * eer:.2f}% (threshold {summary['eer_threshold']:.3f})",
        )
    ax.set_xscale("log")
    ax.set_xlim(max(1.0 / max(n_neg, 1), 1e-6), 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false accept rate (FAR, log scale; {n_neg} different-person pairs)")
    ax.set_ylabel(f"true accept rate (TAR; {int(np.sum(issame))} same-person pairs)")
    ax.set_title("ROC: accepting pairs closer than a threshold")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_distances(dist: np.ndarray, issame: np.ndarray, summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    issame = np.asarray(issame, bool)
    bins = np.linspace(0, 4, 81)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.hist(dist[issame], bins=bins, alpha=0.6, density=True, label=f"same person ({int(issame.sum())})")
    ax.hist(dist[~issame], bins=bins, alpha=0.6, density=True, label=f"different people ({int((~issame).sum())})")
    if summary.get("threshold") is not None:
        ax.axvline(
            summary["threshold"], color="k", ls="--", label=f"best-accuracy threshold {summary['threshold']:.2f}"
        )
    flip = (summary.get("model") or {}).get("flip")
    for cal in (summary.get("calibration") or {}).values():  # drawn when calibrated on these distances
        if cal.get("target_far") is not None and cal.get("flip") == flip:
            ax.axvline(
                cal["threshold"], color="r", ls=":", label=f"FAR {cal['target_far']:g} threshold {cal['threshold']:.3f}"
            )
    ax.set_xlabel("squared L2 distance (0 = identical, 4 = opposite)")
    ax.set_ylabel("density")
    ax.set_title("Pair distances")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_cmc(cmc: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    ranks = np.arange(1, len(cmc) + 1)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(ranks, cmc, "o-", ms=3)
    for k in (1, 5):
        if k <= len(cmc):
            ax.annotate(
                f"rank-{k} {100 * cmc[k - 1]:.1f}%",
                (k, cmc[k - 1]),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
            )
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (true identity within rank k)")
    low = _zoomed_floor(list(cmc))
    ax.set_ylim(low, 1.005)
    ax.set_xticks(ranks if len(ranks) <= 20 else ranks[:: max(1, len(ranks) // 10)])
    ax.set_title("CMC (closed set)" + (f"; y axis from {low:.2f}" if low > 0 else ""))
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def plot_conditions(per_condition: dict, path: Path, overall: float | None = None) -> None:
    """Accuracy at the overall threshold per condition: horizontal bars labelled with the K-Face
    description, the value and the pair count; the axis starts just below the worst condition."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from kface_cli.evaluate.conditions import FACTORS

    panels = []
    for key, label in FACTORS:
        rows = {c: r for c, r in (per_condition.get(key) or {}).items() if r.get("accuracy_at_threshold") is not None}
        if rows:
            panels.append((label, rows))
    values = [r["accuracy_at_threshold"] for _, rows in panels for r in rows.values()]
    low = _zoomed_floor(values + ([overall] if overall is not None else []))
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8, 0.9 + 0.42 * len(values) + 0.5 * len(panels)),
        squeeze=False,
        gridspec_kw={"height_ratios": [len(rows) for _, rows in panels]},
    )
    for ax, (label, rows) in zip(axes[:, 0], panels):
        names = [f"{c}  {r.get('description') or ''}".strip() for c, r in rows.items()][::-1]
        accs = [r["accuracy_at_threshold"] for r in rows.values()][::-1]
        counts = [r.get("n_pairs") for r in rows.values()][::-1]
        colors = ["tab:red" if overall is not None and a < overall - 0.02 else "tab:blue" for a in accs]
        bars = ax.barh(names, [a - low for a in accs], left=low, color=colors, height=0.7)
        for bar, a, n in zip(bars, accs, counts):  # one column right of 100%: never over a bar or the line
            ax.text(
                1.0 + 0.02 * (1.0 - low),
                bar.get_y() + bar.get_height() / 2,
                f"{100 * a:.1f}%" + (f"  ({n} pairs)" if n is not None else ""),
                va="center",
                fontsize=8,
            )
        if overall is not None:
            ax.axvline(overall, color="k", ls="--", lw=1)
        ax.axvline(1.0, color="0.6", lw=0.8)
        ax.set_xlim(low, 1.0 + 0.34 * (1.0 - low))
        ax.set_xticks([t for t in ax.get_xticks() if low <= t <= 1.0])
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_title(f"by {label}", fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    dashed = f"dashed line: all pairs, {100 * overall:.1f}%; red: 2+ points below it. " if overall is not None else ""
    axes[-1, 0].set_xlabel(
        f"accuracy at the overall best threshold (axis from {100 * low:.0f}%). {dashed}"
        "A pair counts under every condition either photo has.",
        fontsize=8,
    )
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------
# rows for the CLI's rich tables
# ------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}%"


def summary_rows(summary: dict) -> list[list[Any]]:
    """``[metric, value, note]`` rows for the main table."""
    rows: list[list[Any]] = []
    if summary.get("n_pairs") is not None:
        rows.append(
            [
                "pairs",
                f"{summary['n_pairs']} ({summary['n_same']} same, {summary['n_diff']} different)",
                summary.get("pairs_source", ""),
            ]
        )
        if summary.get("accuracy") is not None:
            rows.append(
                [
                    "accuracy (10-fold)",
                    f"{_pct(summary['accuracy'])} +- {_pct(summary['accuracy_std'])}",
                    "insightface protocol",
                ]
            )
            rows.append(
                [
                    "best threshold",
                    f"{summary['threshold']:.2f}",
                    f"squared L2; accuracy {_pct(summary['best_accuracy'])} on all pairs",
                ]
            )
        elif summary.get("accuracy_note"):
            rows.append(["accuracy (10-fold)", "-", summary["accuracy_note"]])
        if summary.get("auc") is not None:
            rows.append(["ROC AUC", f"{summary['auc']:.4f}", ""])
            rows.append(["EER", _pct(summary["eer"]), f"at threshold {summary['eer_threshold']:.3f}"])
        for key, item in (summary.get("tar_at_far") or {}).items():
            if item.get("tar") is None:
                rows.append([f"TAR @ FAR {key}", "-", item.get("reason", "")])
            else:
                rows.append([f"TAR @ FAR {key}", _pct(item["tar"]), f"threshold {item['threshold']:.4f}"])
        if summary.get("n_failed_images"):
            rows.append(["images without a face", str(summary["n_failed_images"]), "their pairs count as rejected"])
        strict = (summary.get("landmarks") or {}).get("detector_only")
        if strict:
            rows.append(
                [
                    "accuracy, detector only",
                    f"{_pct(strict['accuracy'])} +- {_pct(strict['accuracy_std'])}",
                    f"the {strict['images_without_detection']} images the detector missed all rejected "
                    "(none taken from their annotation)",
                ]
            )
    if summary.get("rank1") is not None:
        rows.append(
            [
                "probes",
                f"{summary['n_probes']} ({summary['n_known']} known, {summary['n_unknown']} unknown)",
                f"{summary['n_identities']} enrolled identities",
            ]
        )
        if summary.get("n_known_no_face") or summary.get("n_unknown_no_face"):
            rows.append(
                [
                    "probes without a face",
                    f"{summary.get('n_known_no_face', 0)} known, {summary.get('n_unknown_no_face', 0)} unknown",
                    "known: misses in rank-k and DIR; unknown: no name given, left out of FPIR",
                ]
            )
        rows.append(["rank-1 (closed set)", _pct(summary["rank1"]), ""])
        rows.append(["rank-5 (closed set)", _pct(summary.get("rank5")), ""])
        for key, item in (summary.get("dir_at_fpir") or {}).items():
            if item.get("dir") is None:
                rows.append([f"DIR @ FPIR {key}", "-", item.get("reason", "")])
            else:
                people = (
                    f"; {summary.get('n_strangers')} strangers: {item['people_reason']}"
                    if item.get("people_reason")
                    else ""
                )
                rows.append([f"DIR @ FPIR {key}", _pct(item["dir"]), f"threshold {item['threshold']:.4f}{people}"])
    for kind, cal in (summary.get("calibration") or {}).items():
        rows.append(calibration_row(kind, cal))
    return rows


def calibration_row(kind: str, cal: dict) -> list[Any]:
    """``[what, threshold, note]``: the rate it achieves on identify's embeddings and where it went."""
    from kface_cli.embedding.calibration import IDENTIFICATION, describe

    on = cal.get("calibrated_on")
    if kind == IDENTIFICATION:
        strangers = cal.get("n_strangers")
        measured = f"DIR {_pct(cal['dir'])}, FPIR {_pct(cal['achieved_fpir'])} on {cal['n_unknown']} probes of " + (
            f"{strangers} strangers" if strangers is not None else "strangers"
        )
        test = cal.get("on_test")
        if test:
            measured += (
                f"; on test DIR {_pct(test['dir'])}, FPIR {_pct(test['fpir'])} ({test['n_strangers']} strangers)"
            )
    else:
        measured = f"TAR {_pct(cal['tar'])}, FAR {_pct(cal['achieved_far'])}"
        test = cal.get("on_test")
        if test:
            measured += f"; on test TAR {_pct(test['tar'])}, FAR {_pct(test['far'])}"
    if on:
        measured = f"chosen on {on}: {measured}"
    flip = "with flip" if cal.get("flip") else "no flip, as identify"
    if cal.get("saved_to"):
        where = f"saved to {cal['saved_to']}"
    elif cal.get("not_saved"):
        where = "NOT saved: a better-founded one is kept"
    else:
        where = "not saved (add --save-threshold)"
    return [f"threshold {describe(cal)}", f"{cal['threshold']:.4f}", f"{measured} ({flip}); {where}"]


def summary_title(summary: dict) -> str:
    """``Evaluation: mbf_small (test split, flip on)``: the model, the protocol (which part of the
    split) and whether flip was on."""
    model = summary.get("model") or {}
    flip = {True: ", flip on", False: ", flip off"}.get(model.get("flip"), "")
    on = f"{summary['split']} split" if summary.get("split") else summary["protocol"]
    return f"Evaluation: {model.get('network', '')} ({on}{flip})"


VERIFICATION_CONDITION_COLUMNS = ["pairs", "acc@thr", "10-fold", "AUC", "EER"]
IDENTIFICATION_CONDITION_COLUMNS = ["probes", "rank-1", "rank-5"]


def condition_table(per_condition: dict | None) -> tuple[str, list[str], list[list[Any]]]:
    """``(title, columns, rows)``: one row per condition code, in factor order (light, expression,
    camera, accessory); verification and/or identification columns, whichever ran.

    ``acc@thr`` is the accuracy at the overall best threshold (comparable across rows);
    ``10-fold`` the subset's own 10-fold accuracy. TAR@FAR per condition is in the JSON.
    """
    from kface_cli.evaluate.conditions import FACTORS

    rows_in = [(label, code, r) for key, label in FACTORS for code, r in ((per_condition or {}).get(key) or {}).items()]
    has_ver = any("n_pairs" in r for _, _, r in rows_in)
    has_id = any("n_probes" in r for _, _, r in rows_in)
    columns = (
        ["condition", "description"]
        + (VERIFICATION_CONDITION_COLUMNS if has_ver else [])
        + (IDENTIFICATION_CONDITION_COLUMNS if has_id else [])
    )
    rows: list[list[Any]] = []
    for label, code, r in rows_in:
        row: list[Any] = [f"{label} {code}", r.get("description", "")]
        if has_ver:
            row += [
                r.get("n_pairs", "-"),
                _pct(r.get("accuracy_at_threshold")),
                _pct(r.get("accuracy")),
                None if r.get("auc") is None else f"{r['auc']:.4f}",
                _pct(r.get("eer")),
            ]
        if has_id:
            row += [r.get("n_probes", "-"), _pct(r.get("rank1")), _pct(r.get("rank5"))]
        rows.append(row)
    parts = []
    if has_ver:
        parts.append("a pair counts under every code either image has; acc@thr at the overall best threshold")
    if has_id:
        parts.append("probes by their own codes")
    return f"By condition ({'; '.join(parts)})", columns, rows


def landmark_table(landmarks: dict | None) -> tuple[str, list[str], list[list[Any]]] | None:
    """``(title, columns, rows)`` of faces without landmarks per camera code (then the other
    factors), when the faces were aligned again from their photos; None otherwise."""
    from kface_cli.dataset.codes import describe
    from kface_cli.evaluate.conditions import FACTORS

    if not landmarks or not landmarks.get("realigned_from_source_photos"):
        return None
    by = landmarks.get("by_condition") or {}
    order = ["cam"] + [key for key, _ in FACTORS if key != "cam"]
    labels = dict(FACTORS)
    rows = [
        [
            f"{labels[key]} {code}",
            describe(key, code),
            r["images"],
            r.get("low_light", 0),
            r.get("fallback", 0),
            r["no_face"],
            _pct((r["no_face"] + r.get("fallback", 0)) / r["images"]),
        ]
        for key in order
        for code, r in (by.get(key) or {}).items()
    ]
    sources = ", ".join(f"{k} {v}" for k, v in sorted(landmarks.get("sources", {}).items()))
    title = (
        f"Faces aligned again from their photos (landmarks {landmarks['mode']}: {sources}); "
        "low light: found in a contrast-enhanced copy; missed: taken from the K-Face annotation when "
        "there is one, else no face (its pairs fail, and it is left out of identification)"
    )
    columns = ["condition", "description", "images", "low light", "missed: annotation", "missed: no face", "missed"]
    return title, columns, rows
