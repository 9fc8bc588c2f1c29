"""The gallery file's layout (schema 2): limits, records, text encoding, the rows' digests, the
datasets and attributes; what :class:`~kface_cli.gallery.store.Gallery` writes and checks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.embedding.embedder import Embedder
from kface_cli.errors import DiskFullError, InputError

SCHEMA_VERSION = 2


#: Longest identity name and source path kept, in bytes of UTF-8 (longer sources keep their end).
NAME_BYTES = 256


SOURCE_BYTES = 512


HASH_BYTES = 32  # SHA-256


CHUNK_ROWS = 1024


TEXT_CHUNK = 65536


#: Text room reserved per row when the real names are not known yet (grows like the rows).
TEXT_PER_ROW_GUESS = 96


#: Bounds on what a file may claim (a hostile file cannot make kface allocate more).
MAX_EMBEDDING_SIZE = 65536


MAX_ROWS = 1 << 32


MAX_ATTR_CHARS = 4096


#: New room is allocated in steps of at least this factor of the current capacity.
GROWTH_FACTOR = 1.5


FILE_MODE = 0o600


#: Rows copied at a time when the file is rewritten (bounds RAM for million-row galleries).
COPY_BLOCK_ROWS = 65536


_BATCH_HINT = (
    "Every batch committed before this one is safe; free some space and run enroll again "
    "(photos already enrolled are skipped)."
)


_REWRITE_HINT = "The gallery is unchanged (the new copy was never renamed over it); free some space and run it again."


_READ_ONLY_HINT = (
    "identify works as it is; enroll and `kface gallery --remove` need a writable gallery file and folder "
    "(or copy the gallery somewhere writable)."
)


_ROW_FIELDS = ("embeddings", "lengths", "box", "score", "added", "content_hash")


_FIELDS = (*_ROW_FIELDS, "text")


#: Schema 1's row datasets (read and upgraded, never written).
_V1_FIELDS = ("embeddings", "name", "source", "box", "score", "added", "content_hash")


_DIGEST_BLOCK_ROWS = 65536


_M64 = (1 << 64) - 1


_TEXT_POSITION = 1 << 40  # text words are numbered apart from rows in the position mix


_DIGEST_RE = re.compile(r"kface2:(\d{12}):(\d{16}):([0-9a-f]{16}):([0-9a-f]{16}):([0-9a-f]{16}):([0-9a-f]{32})")


_warned_old: set[str] = set()


def content_hash(data: bytes) -> str:
    """SHA-256 (hex) of a photo's bytes: the key that makes re-enrolling a photo a no-op."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Template:
    """One face template to add: an L2-normalised embedding and where it came from."""

    name: str
    embedding: np.ndarray  # (D,) float32, unit length
    source: str
    content_hash: str
    box: tuple[float, float, float, float] = (float("nan"),) * 4
    score: float = float("nan")


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the model a gallery's embeddings came from."""

    fingerprint: str
    embedding_size: int
    network: str = ""
    source: str = ""

    @classmethod
    def of(cls, embedder: Embedder) -> ModelInfo:
        """From an :class:`~kface_cli.embedding.embedder.Embedder`."""
        src = embedder.source
        return cls(
            fingerprint=str(embedder.fingerprint),
            embedding_size=int(embedder.embedding_size),
            network=embedder.network or "",
            source=str(Path(src).resolve()) if src is not None else "",
        )


@dataclass(frozen=True)
class GalleryFacts:
    """The file's facts, for ``kface gallery`` and index staleness checks."""

    path: Path
    schema_version: int
    templates: int
    identities: int
    capacity: int
    embedding_size: int
    fingerprint: str
    network: str
    model_source: str
    created: float
    checksum: str
    file_bytes: int


@dataclass
class GalleryRows:
    """Rows read from a gallery (only the fields asked for are filled).

    ``checksum`` identifies the committed content (the search index records the one it was
    built from); ``index_tag`` is the index description bound to the gallery (0: none).
    """

    names: list[str]
    embeddings: np.ndarray | None = None  # (N, D) float32, unit rows
    sources: list[str] | None = None
    boxes: np.ndarray | None = None  # (N, 4) float32
    scores: np.ndarray | None = None  # (N,) float32
    added: np.ndarray | None = None  # (N,) float64
    hashes: list[str] | None = None
    checksum: str = ""
    index_tag: int = 0
    schema_version: int = SCHEMA_VERSION

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class AppendResult:
    added: int
    duplicates: list[str] = field(default_factory=list)  # sources skipped: content hash already present


@dataclass
class _Block:
    """Rows in the stored form (what one write or copy step moves)."""

    names: list[bytes]
    sources: list[bytes]
    embeddings: np.ndarray  # (B, D) float16
    box: np.ndarray  # (B, 4) float32
    score: np.ndarray  # (B,) float32
    added: np.ndarray  # (B,) float64
    hashes: np.ndarray  # (B, 32) uint8

    def __len__(self) -> int:
        return len(self.names)

    def lengths(self) -> np.ndarray:
        out = np.empty((len(self.names), 2), dtype=np.uint16)
        out[:, 0] = np.fromiter(map(len, self.names), dtype=np.int64, count=len(self.names))
        out[:, 1] = np.fromiter(map(len, self.sources), dtype=np.int64, count=len(self.sources))
        return out

    def text(self) -> bytes:
        return b"".join(n + s for n, s in zip(self.names, self.sources))

    def select(self, keep: np.ndarray) -> _Block:
        idx = np.flatnonzero(keep)
        return _Block(
            [self.names[i] for i in idx],
            [self.sources[i] for i in idx],
            self.embeddings[idx],
            self.box[idx],
            self.score[idx],
            self.added[idx],
            self.hashes[idx],
        )


@dataclass(frozen=True)
class _Commit:
    """The parsed ``digest`` record of a schema 2 file."""

    count: int
    text: int
    meta: int
    names: int
    embeddings: int
    index: int

    def format(self) -> np.bytes_:  # fixed length: rewritten in place
        return np.bytes_(
            f"kface2:{self.count:012d}:{self.text:016d}:{self.meta:016x}:{self.names:016x}:"
            f"{self.embeddings:016x}:{self.index:032x}".encode("ascii")
        )

    @property
    def stamp(self) -> str:
        """What identifies the committed rows (the search index records the stamp it was built from)."""
        return f"{self.count}:{self.names:016x}:{self.embeddings:016x}"


def _h5py():
    import h5py

    return h5py


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")  # names from non-UTF-8 file systems round-trip


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _encode_name(text: str) -> bytes:
    data = _utf8(text)
    if len(data) > NAME_BYTES:
        raise InputError(
            f"identity name is too long for the gallery ({len(data)} bytes of UTF-8, at most {NAME_BYTES}): {text[:60]!r}..."
        )
    return data


def _encode_source(text: str) -> bytes:
    """Paths longer than the column keep their end (the file name), cut at a character boundary."""
    data = _utf8(text)
    if len(data) <= SOURCE_BYTES:
        return data
    tail = data[-(SOURCE_BYTES - 3) :]
    while tail and (tail[0] & 0xC0) == 0x80:  # skip UTF-8 continuation bytes
        tail = tail[1:]
    return b"..." + tail


def _hash_bytes(hexes: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(hexes), HASH_BYTES), dtype=np.uint8)
    for i, h in enumerate(hexes):
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            raw = hashlib.sha256(h.encode("utf-8", "surrogateescape")).digest()
        if len(raw) != HASH_BYTES:
            raw = hashlib.sha256(raw).digest()
        out[i] = np.frombuffer(raw, dtype=np.uint8)
    return out


def _word_weights(words: int) -> np.ndarray:
    """Fixed odd 64-bit weights, one per 8-byte word of a row (odd: a one-word change always shows)."""
    rng = np.random.default_rng(0x6B66616365)
    return rng.integers(0, 2**63, size=words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _row_hash_sum(rows: np.ndarray, first: int) -> int:
    """Sum (mod 2^64) of a mixed 64-bit hash of each row of ``rows`` (rows numbered from ``first``)."""
    n = rows.shape[0]
    if n == 0:
        return 0
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(n, -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), np.uint8)], axis=1)
    words = raw.view(np.uint64)
    h = np.einsum("ij,j->i", words, _word_weights(words.shape[1]))  # wraps mod 2^64; no (n, words) temporary
    with np.errstate(over="ignore"):
        x = h ^ (np.arange(first, first + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64))


def _text_sum(data: np.ndarray, first_word: int) -> int:
    """Digest contribution of text bytes that start at word ``first_word`` (zero-padded to whole words)."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    pad = (-len(data)) % 8
    if pad:
        data = np.concatenate([data, np.zeros(pad, np.uint8)])
    return _row_hash_sum(data.reshape(-1, 8), _TEXT_POSITION + first_word)


def _detail_rows(lengths, box, score, added, hashes) -> np.ndarray:
    """The fixed-size, non-embedding part of rows as one (B, 64) byte matrix."""
    n = len(lengths)
    parts = [
        np.ascontiguousarray(lengths, dtype=np.uint16).reshape(n, 2).view(np.uint8).reshape(n, -1),
        np.ascontiguousarray(box, dtype=np.float32).reshape(n, 4).view(np.uint8).reshape(n, -1),
        np.ascontiguousarray(score, dtype=np.float32).reshape(n, 1).view(np.uint8).reshape(n, -1),
        np.ascontiguousarray(added, dtype=np.float64).reshape(n, 1).view(np.uint8).reshape(n, -1),
        np.ascontiguousarray(hashes, dtype=np.uint8).reshape(n, HASH_BYTES),
    ]
    return np.concatenate(parts, axis=1)


def _meta_hash(attrs: dict) -> int:
    """64-bit hash of the file's identity: schema, embedding size, model, creation time."""
    doc = json.dumps(
        [
            int(attrs["schema_version"]),
            int(attrs["embedding_size"]),
            str(attrs["fingerprint"]),
            str(attrs.get("network", "")),
            str(attrs.get("model_source", "")),
            repr(float(attrs.get("created", 0.0))),
        ],
        ensure_ascii=False,
    )
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def _round_capacity(n: int) -> int:
    return max(CHUNK_ROWS, -(-n // CHUNK_ROWS) * CHUNK_ROWS)


def _round_text(n: int) -> int:
    return max(TEXT_CHUNK, -(-n // TEXT_CHUNK) * TEXT_CHUNK)


def _row_nbytes(dataset) -> int:
    return int(dataset.dtype.itemsize * np.prod(dataset.shape[1:], dtype=np.int64))


def _create_datasets(f, capacity: int, embedding_size: int, text_room: int) -> None:
    """Create every dataset with its room allocated up front (see the module docstring)."""
    from h5py import h5d, h5p

    def early():
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)
        return dcpl

    rows = max(1, min(CHUNK_ROWS, capacity))
    specs = {
        "embeddings": ((capacity, embedding_size), (rows, embedding_size), np.float16, 0.0),
        "lengths": ((capacity, 2), (rows, 2), np.uint16, 0),
        "box": ((capacity, 4), (rows, 4), np.float32, np.nan),
        "score": ((capacity,), (rows,), np.float32, np.nan),
        "added": ((capacity,), (rows,), np.float64, 0.0),
        "content_hash": ((capacity, HASH_BYTES), (rows, HASH_BYTES), np.uint8, 0),
        "text": ((text_room,), (min(TEXT_CHUNK, text_room),), np.uint8, 0),
    }
    for name, (shape, chunks, dtype, fill) in specs.items():
        maxshape = (None, *shape[1:])
        f.create_dataset(name, shape=shape, maxshape=maxshape, chunks=chunks, dtype=dtype, dcpl=early(), fillvalue=fill)


def _disk_full(e: BaseException) -> bool:
    """Is this (OSError, or h5py's ValueError/RuntimeError wrapping one) a full disk or quota?"""
    from kface_cli.atomic import DISK_FULL_ERRNOS

    if isinstance(e, DiskFullError):
        return True
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return True
    text = str(e)
    return any(
        s in text
        for s in (os.strerror(errno.ENOSPC), f"errno = {errno.ENOSPC},", os.strerror(errno.EDQUOT), "File too large")
    )


def _attr_text(value) -> str:
    if isinstance(value, bytes | np.bytes_):
        return _text(bytes(value))
    if isinstance(value, str):
        return value
    raise TypeError(type(value).__name__)


def _attr_int(value) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(type(value).__name__)
    return int(value)
