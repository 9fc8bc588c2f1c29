"""Reading rows by format: schema 2 blocks (:class:`_V2`) and schema 1 files (:class:`_V1`, read and
upgraded); converting stored float16 rows to unit float32 and back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kface_cli.errors import InputError
from kface_cli.gallery.schema import (
    _DIGEST_BLOCK_ROWS,
    _DIGEST_RE,
    _M64,
    COPY_BLOCK_ROWS,
    GalleryRows,
    _attr_int,
    _attr_text,
    _Block,
    _Commit,
    _detail_rows,
    _hash_bytes,
    _row_hash_sum,
    _text,
    _text_sum,
)

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.gallery.store import Gallery


def _write_into(g, block: _Block) -> None:
    """Append ``block`` to a file being written (no fsync: the whole file is renamed into place later)."""
    value = g.attrs["digest"]
    m = _DIGEST_RE.fullmatch(_attr_text(value))
    count, t0 = int(m[1]), int(m[2])
    meta, dn, de = (int(m[i], 16) for i in (3, 4, 5))
    k = len(block)
    lengths = block.lengths()
    text = np.frombuffer(block.text(), dtype=np.uint8)
    g["embeddings"][count : count + k] = block.embeddings
    g["lengths"][count : count + k] = lengths
    g["box"][count : count + k] = block.box
    g["score"][count : count + k] = block.score
    g["added"][count : count + k] = block.added
    g["content_hash"][count : count + k] = block.hashes
    w0 = t0 // 8
    head = np.asarray(g["text"][w0 * 8 : t0], dtype=np.uint8)
    if len(text):
        g["text"][t0 : t0 + len(text)] = text
    dn = (
        dn
        + _row_hash_sum(_detail_rows(lengths, block.box, block.score, block.added, block.hashes), count)
        - _text_sum(head, w0)
        + _text_sum(np.concatenate([head, text]), w0)
    )
    de = de + _row_hash_sum(block.embeddings, count)
    g.attrs["digest"] = _Commit(count + k, t0 + len(text), meta, dn & _M64, de & _M64, 0).format()


def _unit(stored: np.ndarray) -> np.ndarray:
    """Stored (float16) rows -> float32 unit rows (the search works in float32)."""
    x = np.asarray(stored, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True) if x.size else np.ones((len(x), 1), np.float32)
    return x / np.maximum(norms, np.float32(1e-12))


def _to_stored(vectors: np.ndarray, embedding_size: int, where: Path) -> np.ndarray:
    """Check embeddings (finite, non-zero, the gallery's width) and return them unit-normalised in float16."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != embedding_size:
        raise InputError(
            f"embeddings of shape {tuple(x.shape)} do not fit gallery {where} ({embedding_size}-d)",
            hint="Use embeddings made by the gallery's model.",
        )
    if x.dtype.kind not in "fiu":
        raise InputError(f"embeddings must be numbers, got {x.dtype}", path=where)
    out = np.empty(x.shape, dtype=np.float16)
    step = 8192  # rows at a time: the float32 temporaries stay in cache-sized pieces
    for a in range(0, len(x), step):
        block = np.asarray(x[a : a + step], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))  # NaN or inf anywhere in a row shows here
        bad = ~np.isfinite(norms) | (norms < 1e-6)
        if bad.any():
            rows = np.flatnonzero(bad)
            for r in rows:  # a row of huge but finite values overflows float32 squares: rescale it
                v = block[r].astype(np.float64)
                if np.isfinite(v).all() and np.abs(v).max() > 0:
                    norms[r] = np.linalg.norm(v)
                    bad[r] = not (np.isfinite(norms[r]) and norms[r] >= 1e-6)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                what = "not finite (NaN or infinite)" if not np.isfinite(block[first]).all() else "zero"
                raise InputError(
                    f"{int(bad.sum()):,} embeddings are {what} or unusable (first: row {a + first}); nothing from "
                    "this call was stored",
                    hint="The model or the file that produced them is broken; check it with `kface verify` on two photos.",
                    path=where,
                )
        out[a : a + step] = block / norms[:, None]
    return out


def _new_rows(existing: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Which rows of ``batch`` (B, 32) hashes are in neither ``existing`` (N, 32) nor earlier in the batch."""
    keys = np.ascontiguousarray(batch).view(np.uint64)[:, 0]  # the first 8 bytes of random hashes
    old_keys = np.ascontiguousarray(existing).view(np.uint64)[:, 0] if len(existing) else np.zeros(0, np.uint64)
    keep = np.ones(len(batch), dtype=bool)
    maybe_old = np.flatnonzero(np.isin(keys, old_keys))
    if len(maybe_old):  # confirm on all 32 bytes
        full = {existing[i].tobytes() for i in np.flatnonzero(np.isin(old_keys, keys[maybe_old]))}
        for i in maybe_old:
            keep[i] = batch[i].tobytes() not in full
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():  # repeats inside the batch: the first one counts
        seen: set[bytes] = set()
        for i in np.flatnonzero(np.isin(keys, unique[counts > 1])):
            b = batch[i].tobytes()
            if b in seen:
                keep[i] = False
            seen.add(b)
    return keep


class _V2:
    """Blocks of the committed rows of an open schema 2 file (for rewrites)."""

    def __init__(self, gallery: Gallery, f):
        self.gallery, self.f = gallery, f
        self.commit = gallery._verify(f, embeddings=True)  # never copy rows that no longer verify
        self.count = self.commit.count

    def blocks(self, keep: np.ndarray | None) -> Iterator[_Block]:
        f = self.f
        lengths_all = np.asarray(f["lengths"][: self.count], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths_all.sum(axis=1))])
        for a in range(0, self.count, COPY_BLOCK_ROWS):
            b = min(self.count, a + COPY_BLOCK_ROWS)
            text = bytes(f["text"][int(offsets[a]) : int(offsets[b])])
            names, sources = [], []
            pos = 0
            for ln, ls in lengths_all[a:b].tolist():
                names.append(text[pos : pos + ln])
                sources.append(text[pos + ln : pos + ln + ls])
                pos += ln + ls
            block = _Block(
                names,
                sources,
                np.asarray(f["embeddings"][a:b], dtype=np.float16),
                np.asarray(f["box"][a:b], dtype=np.float32).reshape(-1, 4),
                np.asarray(f["score"][a:b], dtype=np.float32),
                np.asarray(f["added"][a:b], dtype=np.float64),
                np.asarray(f["content_hash"][a:b], dtype=np.uint8),
            )
            if keep is not None:
                block = block.select(keep[a:b])
            if len(block):
                yield block


class _V1:
    """Reading schema 1 files (fixed-length strings, float32 embeddings, the older digest)."""

    NAME = 256
    HASH_CHARS = 64

    def __init__(self, gallery: Gallery, f):
        self.gallery, self.f = gallery, f
        self.count = _attr_int(f.attrs["count"])

    def _digest(self) -> tuple[int, int, int] | None:
        value = self.f.attrs.get("digest")
        if value is None:
            return None
        try:
            c, dn, de = _attr_text(value).split(":")
            return int(c), int(dn, 16), int(de, 16)
        except (ValueError, TypeError):
            return (-1, 0, 0)

    def _name_rows(self, names: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        n = len(names)
        a = np.asarray(names, dtype=f"S{self.NAME}").view(np.uint8).reshape(n, self.NAME)
        b = np.asarray(hashes, dtype=f"S{self.HASH_CHARS}").view(np.uint8).reshape(n, self.HASH_CHARS)
        return np.concatenate([a, b], axis=1)

    def verify(self, *, embeddings: bool, names=None, vectors=None) -> None:
        """Schema 1's check, with its holes closed: the digest must cover every row the file claims."""
        g, f, n = self.gallery, self.f, self.count
        digest = self._digest()
        if digest is None:
            return
        covered, want_n, want_e = digest
        bad = []
        if covered != n:
            bad.append("its row count")
        else:
            dn = de = 0
            for a in range(0, n, _DIGEST_BLOCK_ROWS):
                b = min(n, a + _DIGEST_BLOCK_ROWS)
                block_names = names[a:b] if names is not None else f["name"][a:b]
                dn += _row_hash_sum(self._name_rows(block_names, f["content_hash"][a:b]), a)
                if embeddings:
                    block = vectors[a:b] if vectors is not None else f["embeddings"][a:b]
                    de += _row_hash_sum(np.asarray(block, dtype=np.float32), a)
            if dn & _M64 != want_n:
                bad.append("names")
            if embeddings and de & _M64 != want_e:
                bad.append("embeddings")
        if bad:
            raise InputError(
                f"gallery {g.path} failed its integrity check: {' and '.join(bad)} changed since they were written",
                hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
            )

    def read(self, *, embeddings: bool, details: bool) -> GalleryRows:
        f, n = self.f, self.count
        raw_names = f["name"][:n]
        vectors = np.asarray(f["embeddings"][:n], dtype=np.float32) if embeddings else None
        self.verify(embeddings=embeddings, names=raw_names, vectors=vectors)
        checksum = f.attrs.get("checksum", b"")
        rows = GalleryRows(
            names=[_text(bytes(v)) for v in raw_names],
            checksum="v1:" + (_attr_text(checksum) if isinstance(checksum, bytes | np.bytes_ | str) else ""),
            schema_version=1,
        )
        if embeddings:
            rows.embeddings = _unit(vectors)
        if details:
            rows.sources = [_text(bytes(v)) for v in f["source"][:n]]
            rows.boxes = np.asarray(f["box"][:n], dtype=np.float32).reshape(n, 4)
            rows.scores = np.asarray(f["score"][:n], dtype=np.float32)
            rows.added = np.asarray(f["added"][:n], dtype=np.float64)
            rows.hashes = [_text(bytes(h)) for h in f["content_hash"][:n]]
        return rows

    def blocks(self, keep: np.ndarray | None) -> Iterator[_Block]:
        f = self.f
        for a in range(0, self.count, COPY_BLOCK_ROWS):
            b = min(self.count, a + COPY_BLOCK_ROWS)
            emb = np.asarray(f["embeddings"][a:b], dtype=np.float32)
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            block = _Block(
                [bytes(v) for v in f["name"][a:b]],
                [bytes(v) for v in f["source"][a:b]],
                (emb / np.maximum(norms, 1e-12)).astype(np.float16),
                np.asarray(f["box"][a:b], dtype=np.float32).reshape(-1, 4),
                np.asarray(f["score"][a:b], dtype=np.float32),
                np.asarray(f["added"][a:b], dtype=np.float64),
                _hash_bytes([_text(bytes(h)) for h in f["content_hash"][a:b]]),
            )
            if keep is not None:
                block = block.select(keep[a:b])
            if len(block):
                yield block
