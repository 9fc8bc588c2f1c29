"""A model's calibrated decision threshold, stored beside the model.

``kface evaluate --target-far 1e-3 --save-threshold`` finds the squared-L2 threshold whose false
accept rate on the evaluation pairs is at most 1e-3 and stores it here; ``kface identify`` uses it
when no ``--threshold`` is given. A face matches when ``distance < threshold``.

Where: ``<run>/calibration.json`` for a run folder (or a model file inside a run folder, i.e. one
beside ``config.json``), otherwise ``<model file>.calibration.json``. Entries are keyed by the
embedder's fingerprint (weights + preprocessing + flip flag), so a threshold is never applied to
different weights, or to the same weights embedded differently (flip on/off): calibrate with the
same ``--flip`` setting that identification uses.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from kface_cli.errors import InputError, KFaceError
from kface_cli.workspace import RUN_CONFIG

CALIBRATION_FILE = "calibration.json"
CALIBRATION_SUFFIX = ".calibration.json"
CALIBRATION_VERSION = 1


def calibration_path(source: str | Path) -> Path:
    """Where the calibration of the model at ``source`` (run folder or model file) lives."""
    source = Path(source)
    if source.is_dir():
        return source / CALIBRATION_FILE
    if (source.parent / RUN_CONFIG).is_file():
        return source.parent / CALIBRATION_FILE
    return source.with_name(source.name + CALIBRATION_SUFFIX)


def _read(path: Path) -> dict:
    if not path.is_file():
        return {"version": CALIBRATION_VERSION, "entries": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read calibration file {path}: {e}",
            hint="Delete it and run `kface evaluate --target-far ... --save-threshold` again.",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise InputError(f"{path} is not a kface calibration file", hint="Delete it and calibrate again.")
    return data


def _source_of(embedder: Any) -> Path:
    source = getattr(embedder, "source", None)
    if source is None:
        raise KFaceError(
            "this model has no file or run folder to store a threshold beside",
            hint="Evaluate a saved model (--model run/, backbone.pth or .onnx) to save a threshold.",
        )
    return Path(source)


def save_threshold(embedder: Any, threshold: float, target_far: float | None, **details: Any) -> Path:
    """Store ``threshold`` (squared L2; match iff distance < threshold) for this embedder.

    ``target_far`` is None when the threshold was chosen for best accuracy instead.
    ``details`` (e.g. ``achieved_far``, ``tar``, ``n_pairs``, ``pairs``) are stored alongside.
    Returns the calibration file's path. Other fingerprints' entries are kept.
    """
    from kface_cli.atomic import write_text

    if not 0.0 <= float(threshold) <= 4.0:
        raise KFaceError(f"threshold {threshold} is outside the squared-L2 range 0..4")
    path = calibration_path(_source_of(embedder))
    data = _read(path)
    data["version"] = CALIBRATION_VERSION
    data["entries"][str(embedder.fingerprint)] = {
        "threshold": float(threshold),
        "target_far": None if target_far is None else float(target_far),
        "distance": "squared_l2",
        "rule": "match iff distance < threshold",
        "network": getattr(embedder, "network", None),
        "flip": bool(getattr(embedder, "flip", False)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **details,
    }
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_calibration(embedder: Any) -> dict | None:
    """The stored calibration entry for this embedder's fingerprint, or None."""
    source = getattr(embedder, "source", None)
    if source is None:
        return None
    path = calibration_path(source)
    entry = _read(path)["entries"].get(str(embedder.fingerprint))
    return dict(entry, path=str(path)) if isinstance(entry, dict) else None


def load_threshold(embedder: Any) -> float | None:
    """The calibrated threshold for this embedder, or None when it was never calibrated."""
    entry = load_calibration(embedder)
    return None if entry is None else float(entry["threshold"])
