"""A model's calibrated decision thresholds, stored beside the model.

Two kinds, one per question a deployment asks (a face matches when ``distance < threshold``,
squared L2):

- ``verification`` (1:1, "are A and B the same person?"): the threshold whose false accept rate
  (FAR) on different-person pairs is at most a target, ``kface evaluate --target-far 1e-3
  --save-threshold`` (or, without a target, the best-accuracy threshold of the pairs);
- ``identification`` (1:N, "who in the gallery is this, if anyone?"): the threshold whose false
  positive identification rate (FPIR: the share of people *not* enrolled who get a name) is at
  most a target, on a gallery/probe protocol, ``kface evaluate --target-fpir 1e-2 --save-threshold``.

``kface identify`` uses the identification threshold when there is one, else the verification one
(:func:`identify_threshold`). A 1:N search compares a face with every enrolled identity, so a
stranger gets N chances to be accepted: at the same threshold, FPIR grows with the gallery and
exceeds the 1:1 FAR; calibrate 1:N on a gallery the size of the deployed one.

Where: ``<run>/calibration.json`` for a run folder (or a model file inside a run folder, i.e. one
beside ``config.json``), otherwise ``<model file>.calibration.json``. Entries are keyed by the
embedder's fingerprint (weights + preprocessing + flip flag), so a threshold is never applied to
different weights, or to the same weights embedded differently: ``kface evaluate`` calibrates on
embeddings without flip (:func:`without_flip`), as ``kface enroll`` and ``kface identify`` make them.

A calibration is only saved when it means something (:func:`check`: both positive and negative
samples, a threshold inside 0..4), and never silently replaces one founded on more samples
(:func:`weaker_than_saved`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from kface_cli.errors import InputError, KFaceError
from kface_cli.workspace import RUN_CONFIG

CALIBRATION_FILE = "calibration.json"
CALIBRATION_SUFFIX = ".calibration.json"
CALIBRATION_VERSION = 2
#: 1:1 threshold (FAR on pairs).
VERIFICATION = "verification"
#: 1:N threshold (FPIR on a gallery and probes).
IDENTIFICATION = "identification"
#: Per kind: (positive count key, negative count key, their words): the samples a threshold rests on.
EVIDENCE = {
    VERIFICATION: ("n_same", "n_diff", "same-person pairs", "different-person pairs"),
    IDENTIFICATION: ("n_known", "n_unknown", "enrolled-person probes", "not-enrolled probes"),
}
#: Squared L2 between unit vectors lies in 0..4.
MAX_DISTANCE = 4.0


def calibration_path(source: str | Path) -> Path:
    """Where the calibration of the model at ``source`` (run folder or model file) lives."""
    source = Path(source)
    if source.is_dir():
        return source / CALIBRATION_FILE
    if (source.parent / RUN_CONFIG).is_file():
        return source.parent / CALIBRATION_FILE
    return source.with_name(source.name + CALIBRATION_SUFFIX)


#: A calibration file larger than this is not one kface wrote (one entry is about 400 bytes).
MAX_CALIBRATION_BYTES = 1 << 20
_REDO = "Delete it and calibrate again (`kface evaluate --target-far ... --save-threshold`)."


def _read(path: Path) -> dict:
    """The file's data, version 1 entries (one verification threshold each) read as version 2.

    Everything is checked before it is used (a threshold of 1e9 would make everyone "the same
    person", NaN no one): size, JSON, every entry's threshold and counts; a damaged file is one
    line naming it.
    """
    if not path.is_file():
        return {"version": CALIBRATION_VERSION, "entries": {}}
    try:
        size = path.stat().st_size
        if size > MAX_CALIBRATION_BYTES:
            raise InputError(f"calibration file {path} is {size:,} bytes: not one kface wrote", hint=_REDO)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise InputError(
            f"cannot read calibration file {path}: {str(e)[:160] or type(e).__name__}", hint=_REDO
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise InputError(f"{path} is not a kface calibration file", hint="Delete it and calibrate again.")
    entries = {}
    for fp, e in data["entries"].items():
        if not isinstance(e, dict):
            raise InputError(f"calibration file {path} is damaged: entry {str(fp)[:24]!r} is not an object", hint=_REDO)
        kinds = {VERIFICATION: e} if "threshold" in e else e
        for kind, entry in kinds.items():
            _check_entry(path, str(fp), kind, entry)
        entries[str(fp)] = kinds
    return {"version": CALIBRATION_VERSION, "entries": entries}


def _check_entry(path: Path, fp: str, kind: str, entry: Any) -> None:
    """Refuse an entry whose threshold or counts cannot be what kface wrote."""
    where = f"calibration file {path} is damaged: entry {fp[:24]!r}"
    if kind not in EVIDENCE:
        raise InputError(f"{where} has an unknown kind {str(kind)[:40]!r} (known: {', '.join(EVIDENCE)})", hint=_REDO)
    if not isinstance(entry, dict):
        raise InputError(f"{where} {kind} is not an object", hint=_REDO)
    t = entry.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise InputError(f"{where} {kind}: threshold is {'missing' if t is None else repr(t)[:40]}", hint=_REDO)
    if not (math.isfinite(t) and 0.0 < t <= MAX_DISTANCE):
        raise InputError(f"{where} {kind}: threshold {t!r} is outside the squared-L2 range (0, 4]", hint=_REDO)
    for key in EVIDENCE[kind][:2]:
        n = entry.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InputError(f"{where} {kind}: {key} is {repr(n)[:40]}, not a count", hint=_REDO)


def _source_of(embedder: Any) -> Path:
    source = getattr(embedder, "source", None)
    if source is None:
        raise KFaceError(
            "this model has no file or run folder to store a threshold beside",
            hint="Evaluate a saved model (--model run/, backbone.pth or .onnx) to save a threshold.",
        )
    return Path(source)


def without_flip(embedder: Any) -> Any:
    """The same model embedding without flip, as ``kface enroll`` and ``kface identify`` do (the
    embedder itself when flip is already off). Shares the loaded weights; only the flag and the
    fingerprint differ."""
    if not getattr(embedder, "flip", False):
        return embedder
    from kface_cli.embedding.embedder import make_fingerprint

    twin = copy.copy(embedder)
    twin.flip = False
    twin.fingerprint = make_fingerprint(embedder.weights_digest, False)
    return twin


def check(kind: str, entry: dict) -> None:
    """Refuse a calibration that cannot mean anything: no positive or no negative samples (a
    threshold of 0.0 then "wins" by accepting nobody), or a threshold outside 0..4."""
    pos_key, neg_key, pos_word, neg_word = EVIDENCE[kind]
    n_pos, n_neg = entry.get(pos_key), entry.get(neg_key)
    for n, word in ((n_pos, pos_word), (n_neg, neg_word)):
        if not n:
            raise KFaceError(
                f"refusing to calibrate a {kind} threshold without {word} ({n_pos or 0} {pos_word}, {n_neg or 0} {neg_word})",
                hint=f"A threshold separates {pos_word} from {neg_word}: evaluate on data with both.",
            )
    threshold = float(entry["threshold"])
    if not (math.isfinite(threshold) and 0.0 < threshold <= MAX_DISTANCE):
        raise KFaceError(f"threshold {threshold} is outside the squared-L2 range (0, 4]", hint="Calibrate again.")


def _counts(kind: str, entry: dict) -> tuple[int, int]:
    pos_key, neg_key, _, _ = EVIDENCE[kind]
    return int(entry.get(pos_key) or 0), int(entry.get(neg_key) or 0)


def weaker_than_saved(embedder: Any, kind: str, entry: dict) -> str | None:
    """Why saving ``entry`` would replace a calibration founded on more samples (None: it would not).

    A threshold rests on its negatives (it is placed among their distances) and is judged by its
    positives: the new one is weaker when it has fewer of either than the saved one.
    """
    saved = load_calibration(embedder, kind)
    if saved is None:
        return None
    (new_pos, new_neg), (old_pos, old_neg) = _counts(kind, entry), _counts(kind, saved)
    if new_pos >= old_pos and new_neg >= old_neg:
        return None
    _, _, pos_word, neg_word = EVIDENCE[kind]
    return (
        f"{saved['path']} holds a {kind} threshold ({describe(saved)}) from {old_pos} {pos_word} and {old_neg} "
        f"{neg_word}; this one rests on {new_pos} and {new_neg}"
    )


def save_calibration(embedder: Any, kind: str, entry: dict) -> Path:
    """Store ``entry`` (``threshold`` plus how it was found: ``criterion``, the target, the counts of
    :data:`EVIDENCE`, ...) as this embedder's ``kind`` calibration; returns the file's path.

    Checked with :func:`check` first. Other kinds and other fingerprints' entries are kept; call
    :func:`weaker_than_saved` before, to avoid replacing a better-founded calibration.
    """
    from kface_cli.atomic import write_text

    check(kind, entry)
    path = calibration_path(_source_of(embedder))
    data = _read(path)
    data["entries"].setdefault(str(embedder.fingerprint), {})[kind] = {
        **entry,
        "threshold": float(entry["threshold"]),
        "distance": "squared_l2",
        "rule": "match iff distance < threshold",
        "network": getattr(embedder, "network", None),
        "flip": bool(getattr(embedder, "flip", False)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_calibration(embedder: Any, kind: str = VERIFICATION) -> dict | None:
    """This embedder's stored ``kind`` calibration (with ``path`` and ``kind`` added), or None."""
    source = getattr(embedder, "source", None)
    if source is None:
        return None
    path = calibration_path(source)
    entry = _read(path)["entries"].get(str(embedder.fingerprint), {}).get(kind)
    return dict(entry, path=str(path), kind=kind) if isinstance(entry, dict) else None


def load_threshold(embedder: Any, kind: str = VERIFICATION) -> float | None:
    """This embedder's calibrated ``kind`` threshold, or None when it was never calibrated."""
    entry = load_calibration(embedder, kind)
    return None if entry is None else float(entry["threshold"])


def describe(entry: dict) -> str:
    """``1:N at FPIR 1e-02`` / ``1:1 at FAR 1e-03`` / ``1:1 at best accuracy``."""
    from kface_cli.embedding.metrics import far_key

    if entry.get("target_fpir") is not None:
        return f"1:N at FPIR {far_key(entry['target_fpir'])}"
    if entry.get("target_far") is not None:
        return f"1:1 at FAR {far_key(entry['target_far'])}"
    return "1:1 at best accuracy"


def identify_threshold(
    embedder: Any, kinds: tuple[str, ...] = (IDENTIFICATION, VERIFICATION)
) -> tuple[float, str, str] | None:
    """A calibrated threshold as ``(value, kind, description)``: the first of ``kinds`` that was
    calibrated (``kface identify`` prefers 1:N and falls back to 1:1, the description says so;
    ``kface verify`` asks for 1:1 only), or None when there is none."""
    entry = next((e for kind in kinds if (e := load_calibration(embedder, kind)) is not None), None)
    if entry is None:
        return None
    note = "; no 1:N calibration" if entry["kind"] == VERIFICATION and IDENTIFICATION in kinds else ""
    return float(entry["threshold"]), entry["kind"], f"calibrated {describe(entry)}{note}"
