"""Where a model's training data came from: recorded when it is trained, read when it is used.

The synthetic generator (``kface sample-data``, and the bundled ``sample_data/``) leaves a marker
file, :data:`SYNTHETIC_MARKER`, at the root of every tree it writes. ``kface extract`` records the
zip (or folder) each identity came from in ``raw/<Res>/<ID>/.extract.json``. At train time,
:func:`training_data` follows the training identities back to those sources and the result is
stored in the run's ``config.json`` (key ``training_data``); ``kface export`` copies it into the
model's metadata. ``kface identify`` and ``kface verify`` then warn (:func:`synthetic_warning`)
when a model learned only from synthetic faces: on real photos its names are guesses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Written at the root of a synthetic K-Face tree by the generator.
SYNTHETIC_MARKER = "kface-synthetic.json"
#: Key of the provenance record in a run's config.json.
TRAINING_DATA_KEY = "training_data"
#: Metadata key of the same record inside an exported model.
META_TRAINING_DATA = "kface.training_data"
#: Training identities traced back to their source (a sample is enough: one source per dataset).
TRACED_IDENTITIES = 50
#: How many folders above the training data a workspace (with its raw/ folder) is looked for.
WORKSPACE_LEVELS = 3
_SYNTHETIC_DATA_PREFIX = "synthetic:"
#: Per-identity marker ``kface extract`` writes after a complete extraction (selection, counts, source).
DONE_MARKER = ".extract.json"


def mark_synthetic(root: str | Path, **facts: Any) -> Path:
    """Mark ``root`` as a synthetic K-Face tree (``facts``: generator settings, e.g. seed)."""
    from kface_cli.atomic import write_text

    path = Path(root) / SYNTHETIC_MARKER
    write_text(path, json.dumps({"synthetic": True, "generator": "kface sample-data", **facts}, indent=2) + "\n")
    return path


def is_synthetic_source(path: str | Path) -> bool:
    """True when ``path`` (a K-Face zip or folder, or the tree's root) lies in a marked synthetic tree."""
    p = Path(path)
    return any((d / SYNTHETIC_MARKER).is_file() for d in [p, *list(p.parents)[:2]])


def _source_of_identity(data: Path, identity: str) -> str | None:
    """The K-Face zip/folder the identity was extracted from, found through the workspace's raw/."""
    for root in [data, *list(data.parents)[:WORKSPACE_LEVELS]]:
        for marker in sorted((root / "raw").glob(f"*/{identity}/{DONE_MARKER}")):
            try:
                source = json.loads(marker.read_text(encoding="utf-8")).get("key", {}).get("source")
            except (OSError, ValueError, AttributeError):
                continue
            if source:
                return str(source)
    return None


def training_data(data: str | Path, identities: Sequence[str], *, init: str | Path | None = None) -> dict[str, Any]:
    """What a model is trained on: ``{"synthetic", "synthetic_only", "traced_identities", "sources", "init"}``.

    ``synthetic`` is True when every traced identity comes from a synthetic tree (or ``data`` is a
    ``synthetic:`` spec), False when some come from elsewhere, None when none could be traced
    (e.g. a folder that was not extracted by kface). ``synthetic_only`` also needs no pretrained
    ``init`` weights.
    """
    text = str(data)
    sources: list[str] = []
    if text.startswith(_SYNTHETIC_DATA_PREFIX):
        synthetic: bool | None = True
        traced = len(identities)
    else:
        path = Path(text)
        found = [_source_of_identity(path, i) for i in identities[:TRACED_IDENTITIES]]
        traced_sources = [s for s in found if s is not None]
        traced = len(traced_sources)
        if is_synthetic_source(path):
            synthetic, traced = True, len(identities)
        elif traced_sources:
            synthetic = all(is_synthetic_source(s) for s in traced_sources)
        else:
            synthetic = None
        roots = {str(Path(s).parent.parent) for s in traced_sources}
        sources = sorted(roots)[:3]
    return {
        "synthetic": synthetic,
        "synthetic_only": bool(synthetic) and init is None,
        "traced_identities": traced,
        "sources": sources,
        "init": None if init is None else str(init),
    }


def model_training_data(embedder: Any) -> dict[str, Any] | None:
    """The training-data record of a model: from an exported model's metadata, or its run's config.json."""
    from kface_cli.workspace import RUN_CONFIG

    meta = getattr(embedder, "metadata", None) or {}
    if meta.get(META_TRAINING_DATA):
        try:
            record = json.loads(meta[META_TRAINING_DATA])
        except (ValueError, RecursionError):  # a hostile model's metadata: no record
            return None
        return record if isinstance(record, dict) else None
    source = getattr(embedder, "source", None)
    if source is None:
        return None
    source = Path(source)
    config = source / RUN_CONFIG if source.is_dir() else source.parent / RUN_CONFIG
    return run_training_data(config.parent) if config.is_file() else None


def run_training_data(run: str | Path) -> dict[str, Any] | None:
    """The ``training_data`` record in a run folder's config.json (None for older runs)."""
    from kface_cli.workspace import RUN_CONFIG

    try:
        config = json.loads((Path(run) / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    record = config.get(TRAINING_DATA_KEY) if isinstance(config, dict) else None
    return record if isinstance(record, dict) else None


def synthetic_warning(embedder: Any) -> str | None:
    """A one-line warning when the model learned only from synthetic sample data, else None."""
    record = model_training_data(embedder)
    if not record or not record.get("synthetic_only"):
        return None
    return (
        "this model was trained only on synthetic sample data: on photos of real people its names and "
        "same/different answers are guesses. Use a pretrained pack (`kface models get buffalo_l`, "
        "then --model buffalo_l) or train on real faces"
    )


#: What a results table's title says about a model trained only on synthetic faces (survives --quiet).
SYNTHETIC_TITLE_NOTE = "MODEL TRAINED ON SYNTHETIC FACES ONLY: answers about real people are guesses"


def title_note(warnings: list[str]) -> str:
    """The note a results table's title carries for ``warnings`` (a result's ``warnings``), or ""."""
    return (
        f" [{SYNTHETIC_TITLE_NOTE}]"
        if any(w.startswith("this model was trained only on synthetic") for w in warnings)
        else ""
    )


def warn_if_synthetic(embedder: Any) -> list[str]:
    """Warn on stderr when the model learned only from synthetic faces; the warnings, for JSON output."""
    from kface_cli.console import warn

    message = synthetic_warning(embedder)
    if message is None:
        return []
    warn(message)
    return [message]
