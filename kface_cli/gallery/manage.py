"""Looking after a gallery: its facts, who is in it, removing people, rebuilding the index."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kface_cli.errors import InputError
from kface_cli.gallery.index import NUMPY_EXACT_MAX, IndexKind, index_paths, load_index
from kface_cli.gallery.store import Gallery


def manage_gallery(
    path: str | Path,
    *,
    remove: Sequence[str] = (),
    rebuild_index: bool = False,
    index_kind: IndexKind | str = IndexKind.AUTO,
    check: bool = False,
    upgrade: bool = False,
) -> dict[str, Any]:
    """Apply the requested changes, then report ``{facts, identities, removed, index}`` (+ ``check``, ``upgrade``).

    ``upgrade`` first converts a schema 1 gallery to the current schema (keeping the original
    beside it; see :meth:`Gallery.upgrade`). ``check`` verifies every row, the model and the
    schema against the file's digest (refusing a changed file, and a schema 1 file without one).
    The index is rebuilt when asked, after removals and upgrades (when one was in use), and when
    ``index_kind`` names a kind.

    Removing a name that is not in the gallery is an error (nothing is changed then).
    """
    gallery = Gallery(path)
    kind = IndexKind.parse(index_kind, "index kind")
    removed: dict[str, int] = {}
    upgraded = gallery.upgrade() if upgrade else None
    checked = gallery.verify() if check else None
    if remove:
        present = gallery.identities()
        unknown = [n for n in remove if n not in present]
        if unknown:
            raise InputError(
                f"not in the gallery: {', '.join(unknown)}",
                hint="`kface gallery` lists the identities.",
                path=gallery.path,
            )
        removed = {n: present[n] for n in remove}
        gallery.remove(list(remove))
    index_info: dict[str, Any] = {}
    had_index = index_paths(gallery.path)[0].is_file()
    if (
        rebuild_index
        or removed
        or kind is not IndexKind.AUTO  # asking for a kind means building it
        or (upgraded is not None and upgraded["upgraded"] and had_index)
    ):
        loaded = load_index(gallery, kind, rebuild=True)
        index_info = {"rebuilt": True, **loaded.index.meta()}
    else:
        meta = index_paths(gallery.path)[1]
        index_info = {"rebuilt": False, "file": str(index_paths(gallery.path)[0]) if meta.is_file() else None}
    facts = gallery.facts()
    identities = gallery.identities()
    index_file = index_paths(gallery.path)[0]
    return {
        "facts": {
            "path": str(facts.path),
            "templates": facts.templates,
            "identities": facts.identities,
            "embedding_size": facts.embedding_size,
            "network": facts.network,
            "fingerprint": facts.fingerprint,
            "model": facts.model_source,
            "created": _dt.datetime.fromtimestamp(facts.created, _dt.timezone.utc).isoformat(timespec="seconds")
            if facts.created
            else None,
            "schema_version": facts.schema_version,
            "capacity": facts.capacity,
            "file_bytes": facts.file_bytes,
            "bytes_per_template": round(facts.file_bytes / facts.templates) if facts.templates else None,
            "index_file": str(index_file) if index_file.is_file() else None,
            "index_bytes": index_file.stat().st_size if index_file.is_file() else None,
        },
        "identities": [{"name": n, "templates": c} for n, c in identities.items()],
        "removed": [{"name": n, "templates": c} for n, c in removed.items()],
        "index": index_info,
        **({"check": checked} if checked is not None else {}),
        **({"upgrade": upgraded} if upgraded is not None else {}),
    }


def facts_rows(facts: dict[str, Any]) -> list[list[str]]:
    """The ``kface gallery`` facts table: one row per fact, sizes in KiB/MiB/GiB."""
    rows = []
    for key, value in facts.items():
        if key in ("path", "index_bytes") or (key == "bytes_per_template" and value is None):
            continue
        if key == "file_bytes":
            key, value = "file size", _size(value)
        elif key == "bytes_per_template":
            key, value = "file size per template", _size(value)
        elif key == "index_file":
            value = (
                f"{Path(value).name} ({_size(facts['index_bytes'])})"
                if value
                else f"none (searched without one up to {NUMPY_EXACT_MAX:,} templates; built on first identify above)"
            )
        rows.append([key.replace("_", " "), str(value)])
    return rows


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
