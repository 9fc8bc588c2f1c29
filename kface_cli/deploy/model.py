"""The model a deployment command uses, as results report it, and the distance threshold it applies.

Threshold (squared L2 between unit vectors, ``2 - 2 cos``): ``--threshold`` when given, else the
model's calibrated threshold (saved by ``kface evaluate --save-threshold``), else
:data:`~kface_cli.defaults.DEFAULT_THRESHOLD`, with ``threshold_source`` :data:`UNCALIBRATED` and a hint
(:func:`uncalibrated_hint`) saying how to calibrate it.
"""

from __future__ import annotations

from typing import Any

from kface_cli.defaults import DEFAULT_THRESHOLD
from kface_cli.errors import InputError


def resolve_embedder(embedder):
    """An embedder, or the result of calling a loader that returns one."""
    return embedder() if callable(embedder) and not hasattr(embedder, "embed") else embedder


def describe_model(embedder) -> dict[str, Any]:
    """The model as results report it: network, fingerprint... (``Embedder.describe()``)."""
    if hasattr(embedder, "describe"):
        return dict(embedder.describe())
    return {"network": getattr(embedder, "network", None), "fingerprint": embedder.fingerprint}


#: ``threshold_source`` of a model with no calibration for the question asked (the default threshold).
UNCALIBRATED = "uncalibrated"


def uncalibrated_hint(model: str | None = None) -> str:
    """The one line that says how to calibrate an uncalibrated model's threshold."""
    m = f" --model {model}" if model else ""
    return (
        f"the threshold is not calibrated for this model: run `kface evaluate{m} --target-far 1e-3 --save-threshold` "
        f"(1:1) or `--target-fpir 1e-2 --save-threshold` (1:N) on labelled photos of your own"
    )


def resolve_threshold(threshold: float | None, embedder, *, one_to_one: bool = False) -> tuple[float, str, str]:
    """``(threshold, source, detail)``: ``threshold`` if given, else the model's calibrated 1:N
    threshold, else its 1:1 one, else the default (1.5). See the module docstring. ``one_to_one``
    (``kface verify``): only a 1:1 calibration counts."""
    from kface_cli.embedding.calibration import IDENTIFICATION, VERIFICATION, identify_threshold

    if threshold is not None:
        if not 0.0 <= threshold <= 4.0:
            raise InputError(
                f"--threshold {threshold} is outside 0..4",
                hint="It is a squared L2 distance between unit vectors (2 - 2 cos).",
            )
        return float(threshold), "given", "given with --threshold"
    calibrated = identify_threshold(embedder, (VERIFICATION,) if one_to_one else (IDENTIFICATION, VERIFICATION))
    if calibrated is not None:
        value, kind, detail = calibrated
        return value, f"calibrated_{kind}", detail
    return DEFAULT_THRESHOLD, UNCALIBRATED, f"default {DEFAULT_THRESHOLD:g}, NOT calibrated for this model"
