"""Identification (1:N) in ``kface evaluate``: the gallery and probes of the val split, their
embeddings, and the closed- and open-set metrics with their per-condition breakdown.

On ``split/val/``, each identity's most canonical image (:data:`CANONICAL_CODES` when present,
else the first by name) is enrolled and every other image is a probe; the last
:data:`UNKNOWN_FRACTION` of identities (sorted by ID, at least one, when there are
:data:`MIN_IDENTITIES_FOR_UNKNOWNS` or more) are *not* enrolled, so their probes are the
unknowns of the open-set metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kface_cli.embedding import metrics as M
from kface_cli.embedding.embedder import Embedder
from kface_cli.errors import InputError
from kface_cli.evaluate import conditions as C

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.evaluate.evaluation import EvaluateOptions

#: The canonical K-Face image enrolled per identity in the val-split identification protocol.
CANONICAL_CODES = {"acc": "S001", "light": "L1", "expr": "E01", "cam": "C7"}
#: Fraction of val identities kept out of the gallery as open-set unknowns.
UNKNOWN_FRACTION = 0.2
#: Fewest val identities for which some are held out as unknowns.
MIN_IDENTITIES_FOR_UNKNOWNS = 5


def _canonical_rank(path: Path) -> tuple:
    codes = C.codes_of(path)
    return tuple(codes.get(k) != v for k, v in CANONICAL_CODES.items()) + (path.name,)


def val_identification_split(val_dir: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(gallery, probes) from ``split/val/<id>/``: see the module docstring for the rule."""
    from kface_cli.embedding.photos import list_identity_folder

    items = list_identity_folder(val_dir)
    by_id: dict[str, list[Path]] = {}
    for ident, path in items:
        by_id.setdefault(ident, []).append(path)
    ids = sorted(by_id)
    n_unknown = max(1, int(round(len(ids) * UNKNOWN_FRACTION))) if len(ids) >= MIN_IDENTITIES_FOR_UNKNOWNS else 0
    unknown = set(ids[len(ids) - n_unknown :])
    gallery, probes = [], []
    for ident in ids:
        paths = by_id[ident]
        if ident in unknown:
            probes += [(ident, p) for p in paths]
            continue
        enrolled = min(paths, key=_canonical_rank)
        gallery.append((ident, enrolled))
        probes += [(ident, p) for p in paths if p != enrolled]
    return gallery, probes


def embed_identification(
    embedder: Embedder,
    gallery: list[tuple[str, Path]],
    probes: list[tuple[str, Path]],
    options: EvaluateOptions,
    cache: dict,
    loader: Any,
) -> dict:
    """Gallery and probe embeddings (faces found), with their labels and the probes' paths."""
    from kface_cli.embedding.photos import embed_paths

    g_emb, g_ok = embed_paths(
        embedder,
        [p for _, p in gallery],
        loader=loader,
        cache=cache,
        batch_size=options.batch_size,
        description="Gallery faces",
    )
    p_emb, p_ok = embed_paths(
        embedder,
        [p for _, p in probes],
        loader=loader,
        cache=cache,
        batch_size=options.batch_size,
        description="Probe faces",
    )
    if not g_ok.any():
        raise InputError("no face found in any gallery image")
    return {
        "probe_emb": p_emb[p_ok],
        "probe_labels": [lab for (lab, _), k in zip(probes, p_ok) if k],
        "probe_paths": [p for (_, p), k in zip(probes, p_ok) if k],
        # probes without a face: a miss for an enrolled person (see M.identification_metrics)
        "missed_labels": [lab for (lab, _), k in zip(probes, p_ok) if not k],
        "missed_paths": [p for (_, p), k in zip(probes, p_ok) if not k],
        "gallery_emb": g_emb[g_ok],
        "gallery_labels": [lab for (lab, _), k in zip(gallery, g_ok) if k],
    }


def identification_metrics(embedded: dict, fpirs: tuple[float, ...]) -> dict:
    return M.identification_metrics(
        embedded["probe_emb"],
        embedded["probe_labels"],
        embedded["gallery_emb"],
        embedded["gallery_labels"],
        fpirs=fpirs,
        missed_labels=embedded["missed_labels"],
    )


def identify_metrics(embedded: dict, options: EvaluateOptions, embed_s: float) -> dict:
    """The identification metrics of embedded gallery and probes, with the per-condition breakdown."""
    t1 = time.perf_counter()
    ident = identification_metrics(embedded, options.fpirs)
    ident["per_condition_identification"] = C.identification_breakdown(
        [C.codes_of(p) for p in embedded["probe_paths"] + embedded["missed_paths"]], ident["probe_ranks"]
    )
    ident["n_gallery_images"] = len(embedded["gallery_labels"])
    ident["timing"] = {"embed_s": embed_s, "metrics_s": time.perf_counter() - t1}
    return ident
