"""Looking after a gallery: removing people, compacting, upgrading schema 1, stale temporaries."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kface_cli.gallery.formats import _V1
from kface_cli.gallery.schema import (
    SCHEMA_VERSION,
    TEXT_PER_ROW_GUESS,
    _round_capacity,
)


class GalleryMaintenance:
    """Maintenance of :class:`~kface_cli.gallery.store.Gallery`: remove, compact, upgrade, and the
    temporary files an interrupted rewrite leaves."""

    path: Path

    def _temporary_pattern(self) -> re.Pattern:
        """Names :func:`kface_cli.atomic.atomic_path` gives the temporaries of this gallery and its index."""
        stem = self.path.with_suffix("").name
        names = [
            (self.path.name, self.path.suffix),
            (f"{stem}.faiss", ".faiss"),
            (f"{stem}.faiss.json", ".json"),
        ]
        alternatives = "|".join(rf"\.{re.escape(n)}\.[a-z0-9_]{{8}}{re.escape(s)}" for n, s in names)
        return re.compile(rf"^(?:{alternatives})$")

    def _remove_stale_temporaries(self) -> None:
        """Remove what a killed rewrite of this gallery (or its index) left; only called under the lock."""
        from kface_cli.console import info

        pattern = self._temporary_pattern()
        removed, size = 0, 0
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return
        for entry in entries:
            if not pattern.match(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                size += entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
                removed += 1
            except OSError:
                continue
        if removed:
            info(
                f"removed {removed} temporary file{'s' if removed > 1 else ''} ({size / 2**20:.1f} MiB) "
                f"left beside {self.path.name} by an interrupted write"
            )

    def remove(self, names: Sequence[str]) -> int:
        """Remove every template of the given identities (copy-on-write). Returns how many went."""
        wanted = set(names)
        with self._writing():
            with self._open() as f:
                self._refuse_old(f)
                current = self._read(f, embeddings=False, details=False).names
                capacity = int(f["embeddings"].shape[0])
                text_room = int(f["text"].shape[0])
            keep = np.array([nm not in wanted for nm in current], dtype=bool)
            removed = int((~keep).sum())
            if removed:
                self._rewrite(capacity, keep=keep, text_room=text_room)
            return removed

    def compact(self) -> None:
        """Rewrite the file with just enough room for its rows (after large removals)."""
        with self._writing():
            with self._open() as f:
                self._refuse_old(f)
                commit = self._commit_of(f)
            spare = _round_capacity(commit.count) - commit.count
            per_row = commit.text / commit.count if commit.count else TEXT_PER_ROW_GUESS
            self._rewrite(_round_capacity(commit.count), text_room=commit.text + int(spare * per_row) + 8)

    def upgrade(self) -> dict:
        """Convert a schema 1 gallery to schema 2 (float16, compact text, full digest), keeping the original.

        The converted file is written beside the gallery and renamed over it; the original stays
        as ``<name>.schema1<suffix>`` (a hard link, no copy). A schema 1 digest, if any, is
        verified first (a changed file is refused, not signed). Already schema 2: nothing done.
        """
        with self._writing():
            before = self.path.stat().st_size if self.path.exists() else 0
            with self._open() as f:
                version = self._version(f)
                if version == SCHEMA_VERSION:
                    commit = self._verify(f, embeddings=True)
                    return {
                        "upgraded": False,
                        "schema_version": SCHEMA_VERSION,
                        "templates": commit.count,
                        "file_bytes": before,
                    }
                old = _V1(self, f)
                had_digest = "digest" in f.attrs
                if had_digest:
                    old.verify(embeddings=True)
                n = old.count
                text = sum(len(b) for blk in old.blocks(None) for b in blk.names + blk.sources)
            backup = self._backup_name()
            try:
                os.link(self.path, backup)  # no copy: the rename below leaves the old inode to the backup
            except OSError:  # a filesystem without hard links: a real copy
                import shutil

                from kface_cli.atomic import storage_error

                try:
                    shutil.copy2(self.path, backup)
                except OSError as e:
                    backup.unlink(missing_ok=True)
                    raise (storage_error(e, backup) or e) from None
            try:
                spare = _round_capacity(n) - n
                self._rewrite(
                    _round_capacity(n), text_room=text + int(spare * (text / n if n else TEXT_PER_ROW_GUESS)) + 8
                )
            except BaseException:
                backup.unlink(missing_ok=True)
                raise
            return {
                "upgraded": True,
                "from_schema": version,
                "schema_version": SCHEMA_VERSION,
                "templates": n,
                "had_digest": had_digest,
                "bytes_before": before,
                "file_bytes": self.path.stat().st_size,
                "backup": str(backup),
            }

    def _backup_name(self) -> Path:
        stem, suffix = self.path.with_suffix("").name, self.path.suffix
        candidate = self.path.with_name(f"{stem}.schema1{suffix}")
        i = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{stem}.schema1.{i}{suffix}")
            i += 1
        return candidate
