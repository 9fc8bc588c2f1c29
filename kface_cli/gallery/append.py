"""Adding templates to a gallery: photos' templates, or vectors in bulk, committed in blocks."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kface_cli.errors import InputError
from kface_cli.gallery.formats import _V2, _new_rows, _to_stored
from kface_cli.gallery.schema import (
    GROWTH_FACTOR,
    HASH_BYTES,
    SCHEMA_VERSION,
    TEXT_PER_ROW_GUESS,
    AppendResult,
    ModelInfo,
    Template,
    _Block,
    _encode_name,
    _encode_source,
    _hash_bytes,
    _round_capacity,
    _text,
)


class GalleryAppends:
    """The append side of :class:`~kface_cli.gallery.store.Gallery`: templates and vectors in, committed
    in blocks (:meth:`_write_block`), duplicates skipped, room reserved ahead."""

    path: Path

    # writing ------------------------------------------------------------------------------
    def append(self, templates: Sequence[Template], model: ModelInfo, *, skip_duplicates: bool = True) -> AppendResult:
        """Commit one batch of templates (creating the gallery if needed). Crash-safe; see module doc.

        Templates whose content hash is already in the gallery (or earlier in the batch) are
        skipped when ``skip_duplicates``: re-enrolling a photo is a no-op.
        """
        if not templates:
            return AppendResult(0)
        return self._append_block(self._block_of(templates, model), model, skip_duplicates=skip_duplicates)

    def _block_of(self, templates: Sequence[Template], model: ModelInfo) -> _Block:
        emb = np.stack([np.asarray(t.embedding, dtype=np.float32).reshape(-1) for t in templates])  # (B, D)
        return _Block(
            names=[_encode_name(t.name) for t in templates],
            sources=[_encode_source(t.source) for t in templates],
            embeddings=_to_stored(emb, model.embedding_size, self.path),
            box=np.array([t.box for t in templates], dtype=np.float32).reshape(-1, 4),
            score=np.array([t.score for t in templates], dtype=np.float32),
            added=np.full(len(templates), time.time()),
            hashes=_hash_bytes([t.content_hash for t in templates]),
        )

    def append_vectors(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        model: ModelInfo,
        *,
        sources: Sequence[str] | None = None,
        batch_rows: int = 16384,
        skip_duplicates: bool = True,
        reserve: bool = True,
        on_batch=None,
    ) -> AppendResult:
        """Bulk enrolment of precomputed embeddings: ``names[i]`` is the identity of ``vectors[i]``.

        Vectors are checked (finite, non-zero, ``model.embedding_size`` wide) and L2-normalised.
        Rows are committed in batches of ``batch_rows`` (a crash keeps every committed batch). A
        row's content hash is SHA-256 of its name and stored embedding: enrolling the same file
        again adds nothing. ``reserve``: first grow the file once to the size needed (a caller
        adding many slices reserves once itself). ``on_batch(rows)`` is called after each commit.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise InputError(
                f"expected one embedding per name: {len(names)} names, embeddings of shape {vectors.shape}",
                path=self.path,
            )
        if sources is not None and len(sources) != len(names):
            raise InputError(f"expected one source per name: {len(names)} names, {len(sources)} sources")
        stored = _to_stored(vectors, model.embedding_size, self.path)  # checks, normalises: (N, D) float16
        name_bytes = [_encode_name(n) for n in names]
        src_bytes = [_encode_source(s) for s in sources] if sources is not None else [b""] * len(names)
        hashes = np.empty((len(names), HASH_BYTES), dtype=np.uint8)
        for i, (n, e) in enumerate(zip(name_bytes, stored)):
            h = hashlib.sha256(n)
            h.update(b"\0")
            h.update(e)
            hashes[i] = np.frombuffer(h.digest(), dtype=np.uint8)
        if not len(names):
            return AppendResult(0)
        if reserve:
            text_bytes = sum(map(len, name_bytes)) + sum(map(len, src_bytes))
            existing = self.facts() if self.exists() else None
            self.reserve(
                (existing.templates if existing else 0) + len(names),
                model,
                text_bytes=text_bytes + (self._text_used() if existing else 0),
            )
        added, duplicates = 0, []
        now = time.time()
        for a in range(0, len(names), max(1, batch_rows)):
            b = min(len(names), a + max(1, batch_rows))
            block = _Block(
                name_bytes[a:b],
                src_bytes[a:b],
                stored[a:b],
                np.full((b - a, 4), np.nan, np.float32),
                np.full(b - a, np.nan, np.float32),
                np.full(b - a, now),
                hashes[a:b],
            )
            r = self._append_block(block, model, skip_duplicates=skip_duplicates)
            added += r.added
            duplicates += r.duplicates
            if on_batch is not None:
                on_batch(b - a)
        return AppendResult(added, duplicates)

    def _text_used(self) -> int:
        with self._open() as f:
            return self._commit_of(f).text if self._version(f) == SCHEMA_VERSION else 0

    def _append_block(self, block: _Block, model: ModelInfo, *, skip_duplicates: bool) -> AppendResult:
        with self._writing():
            if not self.path.exists():
                self._write_new(
                    model,
                    len(block),
                    created=time.time(),
                    text_room=len(block.text()) + len(block) * TEXT_PER_ROW_GUESS,
                )
            with self._open("r") as f:
                self._refuse_old(f)
                self._check(self._model_of(f), model)
                commit = self._commit_of(f)
                capacity = int(f["embeddings"].shape[0])
                text_room = int(f["text"].shape[0])
                existing = np.asarray(f["content_hash"][: commit.count]) if skip_duplicates else None
            duplicates: list[str] = []
            if skip_duplicates:
                keep = _new_rows(existing, block.hashes)
                if not keep.all():
                    duplicates = [_text(block.sources[i]) for i in np.flatnonzero(~keep)]
                    block = block.select(keep)
            if not len(block):
                return AppendResult(0, duplicates)
            text = len(block.text())
            if commit.count + len(block) > capacity or commit.text + text > text_room:
                rows_needed = commit.count + len(block)
                new_capacity = max(rows_needed, int(capacity * GROWTH_FACTOR)) if rows_needed > capacity else capacity
                per_row = (commit.text + text) / max(1, rows_needed)
                text_needed = commit.text + text
                new_text = max(text_needed, int(text_room * GROWTH_FACTOR), int(new_capacity * per_row * 1.05))
                self._rewrite(new_capacity, text_room=new_text)
            self._write_block(block)
            return AppendResult(len(block), duplicates)

    def _refuse_old(self, f) -> None:
        if self._version(f) != SCHEMA_VERSION:
            raise InputError(
                f"gallery {self.path} has the older format (schema {self._version(f)}); kface writes only schema {SCHEMA_VERSION}",
                hint=f"Run `kface gallery --upgrade --gallery {self.path}` once (it keeps the original), then this again.",
            )

    def reserve(self, rows: int, model: ModelInfo, *, text_bytes: int | None = None) -> None:
        """Make room for ``rows`` templates in all (and ``text_bytes`` of names and sources), creating the gallery if needed.

        Call it before a large enrolment: the file then grows once, to the size needed, instead
        of by :data:`GROWTH_FACTOR` steps (each a full copy-on-write rewrite) with up to 50% of
        pre-allocated room left unused at the end.
        """
        with self._writing():
            if not self.path.exists():
                self._write_new(
                    model,
                    _round_capacity(rows),
                    created=time.time(),
                    text_room=text_bytes if text_bytes is not None else rows * TEXT_PER_ROW_GUESS,
                )
                return
            with self._open() as f:
                self._refuse_old(f)
                self._check(self._model_of(f), model)
                capacity = int(f["embeddings"].shape[0])
                commit = self._commit_of(f)
                text_room = int(f["text"].shape[0])
            per_row = commit.text / commit.count if commit.count else TEXT_PER_ROW_GUESS
            want_text = text_bytes if text_bytes is not None else int(rows * per_row * 1.05) + TEXT_PER_ROW_GUESS
            if rows > capacity or want_text > text_room:
                self._rewrite(max(rows, capacity), text_room=max(want_text, text_room))

    def replace(self, names: Sequence[str], templates: Sequence[Template], model: ModelInfo) -> int:
        """Swap every template of ``names`` for ``templates`` in one copy-on-write rewrite.

        The old rows and the new ones change places in a single atomic rename: an interrupted
        call leaves the gallery as it was. Returns how many old templates went. ``templates``
        must not be empty (a person is never left with none by a replace).
        """
        assert templates, "replace() needs new templates"
        block = self._block_of(templates, model)
        wanted = set(names)
        with self._writing():
            if not self.path.exists():
                room = len(block.text()) + len(block) * TEXT_PER_ROW_GUESS
                self._write_new(model, len(block), created=time.time(), text_room=room, extra=block)
                return 0
            with self._open() as f:
                self._refuse_old(f)
                self._check(self._model_of(f), model)
                current = self._read(f, embeddings=False, details=False).names
                keep = np.array([nm not in wanted for nm in current], dtype=bool)
                capacity = max(int(f["embeddings"].shape[0]), int(keep.sum()) + len(block))
                text_room = int(f["text"].shape[0]) + len(block.text())
                created = float(f.attrs.get("created", time.time()))
                source = _V2(self, f)
                self._write_new(
                    model, capacity, created=created, source=source, keep=keep, text_room=text_room, extra=block
                )
            return int((~keep).sum())
