"""The gallery file: every enrolled face template in one HDF5 file, compact and safe against crashes.

Layout of ``gallery.h5`` (schema 2). Row ``i`` of every row dataset describes template ``i``; only
the first ``count`` rows are committed (the rest is pre-allocated room)::

    embeddings   (capacity, D)  float16  unit vectors (searched in float32 after a renormalise)
    lengths      (capacity, 2)  uint16   bytes of the row's name and source in ``text``
    text         (text_room,)   uint8    every row's name then source, UTF-8, back to back
    box          (capacity, 4)  float32  face box x, y, w, h in the photo (NaN for aligned crops)
    score        (capacity,)    float32  detection score (NaN for aligned crops and bulk enrolment)
    added        (capacity,)    float64  when it was enrolled, Unix seconds
    content_hash (capacity, 32) uint8    SHA-256 of the photo's bytes: re-enrolling it is a no-op
    attrs: schema_version, embedding_size, fingerprint, network, model_source, created, digest

About 1.1 KiB per 512-d template (1 KiB of it the float16 embedding), against 2.9 KiB in schema 1.

``digest`` is the one commit record, written last and alone (one attribute)::

    kface2:<count>:<text bytes>:<meta>:<names>:<embeddings>:<index>

``count`` and the bytes of ``text`` in use are the committed extent (nothing else says how many rows
there are, so a row written past them with a "bumped count" is never read, and editing the counts
breaks the sums); ``meta`` is a hash of the schema version, embedding size, model fingerprint,
network, model source and creation time; ``names`` is a sum over committed rows of a 64-bit hash of
each row (mixed with its position) of lengths, box, score, time and content hash, plus the same over
the 8-byte words of ``text``; ``embeddings`` the same over the float16 embedding rows; ``index`` a
hash of the search index's description (:mod:`kface_cli.gallery.index`), 0 when none is bound. The
sums are incremental (an append adds only its own rows) and vectorised; any single changed byte is
always caught, several with probability 1 - 2^-64. They guard against corruption and edits, not
against someone who recomputes them (nothing unkeyed can).

Schema 1 galleries (float32 embeddings, fixed 256/512-byte strings, a digest that did not cover the
model or rows past its own count) are still read, with a warning (and refused when their digest is
missing or covers fewer rows than the file claims: nothing vouches for those rows);
``kface gallery --upgrade`` converts one to schema 2 (:meth:`Gallery.upgrade`) and keeps the
original beside it. Writes go to schema 2 files only.

Why it never corrupts, even on ``kill -9``:

* Every dataset is allocated in full when the file is created (HDF5 "early allocation"), so an
  append writes raw bytes into room that already exists: no chunk index, heap or dataspace
  changes. Names and sources are variable-length, but in kface's own pre-allocated ``text`` room.
* An append writes its rows and text, flushes and fsyncs, and only then rewrites ``digest`` (one
  fixed-length attribute): readers ignore rows past its count, so a batch killed half-way is
  invisible and the next append simply overwrites it.
* Growing past the capacity, removing people, upgrading and rebuilding are copy-on-write: a new
  file is written beside the old one and renamed over it (``os.replace`` is atomic). A rewrite
  killed half-way leaves a hidden temporary file; the next writer (it holds the lock, so nobody
  else is writing one) removes it and says so.
* Writers hold an exclusive lock on ``gallery.h5.lock`` beside the file (``filelock``: ``flock``
  on Unix, ``msvcrt.locking`` on Windows; released by the OS when a process dies), so two enrolls at
  once take turns batch by batch and neither loses entries. Readers create no file at all: HDF5's
  own file lock keeps them from opening the file while a writer has it open (each side waits for
  the other), and the commit order above means that even without it (``HDF5_USE_FILE_LOCKING=FALSE``,
  filesystems without locks) a reader only ever sees committed rows. So ``kface identify`` works on
  a gallery in a read-only folder or filesystem.
* A read-only ``gallery.h5`` (no write permission bits) or folder is refused for writes with one
  line (:class:`~kface_cli.errors.ReadOnlyError`), never rewritten; a full disk stops a write with
  :class:`~kface_cli.errors.DiskFullError` before anything committed is touched.

Every field is validated before use (types, shapes, dtypes, bounded sizes): a damaged or foreign
file is one line naming it. The file is created with mode 0600: it holds biometric data. Rewrites
keep the mode it has.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.errors import DiskFullError, InputError, KFaceError, ModelMismatchError, ReadOnlyError

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
#: How long to wait for another kface process that holds the gallery before giving up.
LOCK_WAIT_SECONDS = 600.0
_LOCK_POLL_SECONDS = 0.05
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
    def of(cls, embedder) -> ModelInfo:
        """From a :class:`kface_cli.embedding.embedder.Embedder` (anything with fingerprint/embedding_size/network/source)."""
        src = getattr(embedder, "source", None)
        return cls(
            fingerprint=str(embedder.fingerprint),
            embedding_size=int(embedder.embedding_size),
            network=str(getattr(embedder, "network", "") or ""),
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


# -- low-level helpers -------------------------------------------------------------------------


def _h5py():
    import h5py

    return h5py


def lock_path(gallery: Path) -> Path:
    return gallery.with_name(gallery.name + ".lock")


@contextmanager
def writer_lock(gallery: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive writer lock on the lock file beside ``gallery`` (see the module doc).

    Yields True once held. ``wait=False``: yields False at once when another process holds it.
    A folder where the lock file cannot be created raises :class:`~kface_cli.errors.ReadOnlyError`.
    """
    from filelock import FileLock, Timeout

    from kface_cli.atomic import storage_error

    gallery = Path(gallery)
    lock = FileLock(lock_path(gallery), mode=FILE_MODE)
    try:
        gallery.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            if not wait:
                yield False
                return
            _say_waiting(gallery)
            lock.acquire(timeout=LOCK_WAIT_SECONDS, poll_interval=_LOCK_POLL_SECONDS)
    except Timeout:
        raise _busy(gallery) from None
    except OSError as e:
        raise (storage_error(e, gallery, read_only_hint=_READ_ONLY_HINT) or e) from None
    try:
        yield True
    finally:
        lock.release()


def _say_waiting(gallery: Path) -> None:
    from kface_cli.console import info

    info(f"waiting for another kface process using {gallery.name} ...")


def _busy(gallery: Path) -> InputError:
    return InputError(
        f"gallery {gallery} stayed in use by another kface process for {LOCK_WAIT_SECONDS:.0f} s",
        hint="Wait for the other enroll or `kface gallery` to finish, then run this again.",
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# -- the gallery -------------------------------------------------------------------------------


class Gallery:
    """A gallery file. Every method opens and closes the file itself, under the lock.

    ``Gallery(path)`` does not touch the disk; :meth:`create` makes a new file,
    :meth:`facts`/:meth:`read` raise :class:`InputError` for a missing or corrupt one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r})"

    # creating and opening ----------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def create(self, model: ModelInfo, capacity: int = CHUNK_ROWS) -> None:
        """Write a new, empty gallery for ``model`` (atomically, mode 0600). Fails if it exists."""
        with self._writing():
            if self.path.exists():
                raise InputError(f"gallery already exists: {self.path}", hint="Enroll into it, or remove it first.")
            self._write_new(model, capacity, created=time.time())

    def _open(self, mode: str = "r"):
        """Open the HDF5 file and validate it; missing, unreadable or damaged files become one clear error.

        While another process has the file open for writing (HDF5's file lock), wait for it.
        """
        h5py = _h5py()
        if not self.path.exists():
            raise InputError(
                f"gallery not found: {self.path}",
                hint="Enroll people first with `kface enroll DIR`, or pass --gallery.",
            )
        if self.path.is_dir():
            raise InputError(f"expected a gallery file, got a folder: {self.path}")
        if not stat.S_ISREG(self.path.stat().st_mode):  # a FIFO or device would block or never end
            raise InputError(
                f"gallery {self.path} is not a regular file", hint="Pass the gallery file `kface enroll` wrote."
            )
        deadline = None
        while True:
            try:
                # best-effort: filesystems without locks (some NFS mounts) still open; conflicts still wait
                f = h5py.File(self.path, mode, locking="best-effort")
                break
            except BlockingIOError:  # the other side (reader or writer) has it open: take turns
                if deadline is None:
                    _say_waiting(self.path)
                    deadline = time.monotonic() + LOCK_WAIT_SECONDS
                elif time.monotonic() > deadline:
                    raise _busy(self.path) from None
                time.sleep(_LOCK_POLL_SECONDS)
            except OSError as e:
                raise self._open_error(e, mode) from None
        try:
            self._validate(f)
        except KFaceError:
            f.close()
            raise
        except Exception as e:  # anything else a hostile file provokes in h5py or numpy: still one line
            f.close()
            raise self._damaged(f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}") from None
        return f

    def _open_error(self, e: OSError, mode: str) -> Exception:
        from kface_cli.atomic import storage_error

        if mode != "r" and (err := storage_error(e, self.path, read_only_hint=_READ_ONLY_HINT)) is not None:
            return err
        if e.errno in (errno.EACCES, errno.EPERM):
            return InputError(
                f"cannot read gallery {self.path}: permission denied",
                hint="kface needs read access to the file; run it as a user who may read it.",
            )
        return InputError(
            f"cannot open gallery {self.path}: not a readable HDF5 file ({str(e).splitlines()[0][:120]})",
            hint="The file is damaged or is not a kface gallery; re-enroll into a new --gallery.",
        )

    def _damaged(self, what: str) -> InputError:
        return InputError(
            f"gallery {self.path} is damaged ({what})",
            hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
        )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer lock, after refusing a gallery file without write permission (never rewritten).

        Holding the lock, it also removes temporary files an interrupted rewrite left behind.
        """
        with writer_lock(self.path):
            self._refuse_read_only()
            self._remove_stale_temporaries()
            yield

    def _refuse_read_only(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if not st.st_mode & 0o222:
            raise ReadOnlyError(
                f"gallery {self.path} is read-only (mode {st.st_mode & 0o777:04o}): kface will not change it",
                hint="Make it writable (chmod u+w) to enroll into it or remove people; identify works as it is.",
            )

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

    # validation ---------------------------------------------------------------------------
    def _validate(self, f) -> None:
        """Check every field the reader will use: presence, type, shape, dtype and bounded sizes."""
        if "schema_version" not in f.attrs:
            missing = "attr schema_version"
            raise InputError(
                f"{self.path} is not a kface gallery (missing {missing})",
                hint="Pass the gallery written by `kface enroll`, or enroll into a new file.",
            )
        try:
            version = _attr_int(f.attrs["schema_version"])
        except TypeError as e:
            raise self._damaged(f"schema_version is a {e}, not an integer") from None
        if version > SCHEMA_VERSION:
            raise InputError(
                f"gallery {self.path} has schema {version}, newer than this kface understands ({SCHEMA_VERSION})",
                hint="Upgrade kface.",
            )
        if version < 1:
            raise self._damaged(f"schema_version {version}")
        fields = _FIELDS if version == SCHEMA_VERSION else _V1_FIELDS
        required = ("embedding_size", "fingerprint") + (("count",) if version == 1 else ())
        missing = [k for k in fields if k not in f] + [f"attr {a}" for a in required if a not in f.attrs]
        if missing:
            raise InputError(
                f"{self.path} is not a kface gallery (missing {', '.join(missing)})",
                hint="Pass the gallery written by `kface enroll`, or enroll into a new file.",
            )
        h5py = _h5py()
        outside = [  # links, external raw data or virtual datasets would make kface read other files
            k
            for k in fields
            if not isinstance(f.get(k, getlink=True), h5py.HardLink)
            or not isinstance(f[k], h5py.Dataset)
            or f[k].external
            or f[k].is_virtual
        ]
        if outside:
            raise InputError(
                f"gallery {self.path} refers to data outside itself ({', '.join(outside)})",
                hint="kface reads only data stored inside the gallery file; re-enroll into a new --gallery.",
            )
        try:
            d = _attr_int(f.attrs["embedding_size"])
        except TypeError as e:
            raise self._damaged(f"embedding_size is a {e}, not an integer") from None
        if not 1 <= d <= MAX_EMBEDDING_SIZE:
            raise self._damaged(f"embedding_size {d}")
        for key in ("fingerprint", "network", "model_source"):
            if key in f.attrs:
                try:
                    value = _attr_text(f.attrs[key])
                except TypeError as e:
                    raise self._damaged(f"{key} is a {e}, not text") from None
                if len(value) > MAX_ATTR_CHARS:
                    raise self._damaged(f"{key} is {len(value):,} characters long")
        if "created" in f.attrs and not isinstance(f.attrs["created"], float | np.floating | int | np.integer):
            raise self._damaged("created is not a number")
        emb_dtype = np.float16 if version == SCHEMA_VERSION else np.float32
        expected = {"embeddings": (2, emb_dtype, d), "box": (2, np.float32, 4), "score": (1, np.float32, None)}
        expected["added"] = (1, np.float64, None)
        if version == SCHEMA_VERSION:
            expected["lengths"] = (2, np.uint16, 2)
            expected["content_hash"] = (2, np.uint8, HASH_BYTES)
            expected["text"] = (1, np.uint8, None)
        for k, (ndim, dtype, width) in expected.items():
            ds = f[k]
            if ds.ndim != ndim or ds.dtype != np.dtype(dtype) or (width is not None and ds.shape[1] != width):
                shape = "x".join(map(str, ds.shape)) or "scalar"
                raise self._damaged(f"{k} is {ds.dtype} {shape}, expected {ndim}-D {np.dtype(dtype)}")
        if version == 1:
            for k in ("name", "source", "content_hash"):
                ds = f[k]
                if ds.ndim != 1 or ds.dtype.kind != "S" or ds.dtype.itemsize > 4096:
                    raise self._damaged(f"{k} is {ds.dtype} with {ds.ndim} dimensions, expected fixed-length text")
        row_fields = [k for k in fields if k != "text"]
        capacity = f["embeddings"].shape[0]
        if capacity > MAX_ROWS or any(f[k].shape[0] != capacity for k in row_fields):
            raise self._damaged("its datasets disagree on the number of rows")
        if version == SCHEMA_VERSION:
            commit = self._commit_of(f)
            count, text = commit.count, commit.text
            if text > f["text"].shape[0]:
                raise self._damaged(f"{text:,} bytes of names claimed, {f['text'].shape[0]:,} stored")
        else:
            try:
                count = _attr_int(f.attrs["count"])
            except TypeError as e:
                raise self._damaged(f"count is a {e}, not an integer") from None
            text = 0
        if not 0 <= count <= capacity:
            raise self._damaged(f"count {count} does not fit its datasets")
        # kface writes every row uncompressed and allocated: a file that claims more rows than it
        # stores (compressed or sparse datasets) would make a read allocate memory it never had.
        short = [k for k in row_fields if f[k].id.get_storage_size() < count * _row_nbytes(f[k])]
        if version == SCHEMA_VERSION and f["text"].id.get_storage_size() < text:
            short.append("text")
        if short:
            raise InputError(
                f"gallery {self.path} claims {count:,} rows but stores fewer ({', '.join(short)})",
                hint="It was not written by kface; re-enroll into a new --gallery.",
            )

    def _commit_of(self, f) -> _Commit:
        """The schema 2 commit record; a file without one is refused (nothing vouches for its rows)."""
        value = f.attrs.get("digest")
        if value is None:
            raise InputError(
                f"gallery {self.path} has no digest (schema {SCHEMA_VERSION} galleries always have one): "
                "it was changed outside kface",
                hint="Restore it from a backup or re-enroll into a new --gallery.",
            )
        try:
            m = _DIGEST_RE.fullmatch(_attr_text(value))
        except TypeError:
            m = None
        if m is None:
            raise self._damaged("its digest is unreadable")
        count, text = int(m[1]), int(m[2])
        return _Commit(count, text, *(int(m[i], 16) for i in (3, 4, 5, 6)))

    @staticmethod
    def _version(f) -> int:
        return int(f.attrs["schema_version"])

    def model(self) -> ModelInfo:
        """The model the gallery was made with (its fingerprint checked against the digest)."""
        with self._open() as f:
            if self._version(f) == SCHEMA_VERSION and self._commit_of(f).meta != _meta_hash(f.attrs):
                raise InputError(
                    f"gallery {self.path} failed its integrity check: its model or schema changed since they were written",
                    hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
                )
            return self._model_of(f)

    @staticmethod
    def _model_of(f) -> ModelInfo:
        a = f.attrs
        return ModelInfo(
            fingerprint=_attr_text(a["fingerprint"]),
            embedding_size=int(a["embedding_size"]),
            network=_attr_text(a.get("network", "")),
            source=_attr_text(a.get("model_source", "")),
        )

    def check_model(self, model: ModelInfo) -> None:
        """Refuse to mix embeddings of two models (:class:`ModelMismatchError`)."""
        ours = self.model()
        self._check(ours, model)

    def _check(self, ours: ModelInfo, model: ModelInfo) -> None:
        if ours.fingerprint != model.fingerprint or ours.embedding_size != model.embedding_size:
            raise ModelMismatchError(
                f"gallery {self.path} was made with another model "
                f"({ours.network or '?'} {ours.fingerprint[:12]}, {ours.embedding_size}-d, from {ours.source or '?'}) "
                f"than the one given ({model.network or '?'} {model.fingerprint[:12]}, {model.embedding_size}-d, from {model.source or '?'})",
                hint=f"Use the model the gallery was made with (--model {ours.source or '...'}), or enroll everyone again with this model into a new --gallery.",
            )

    # integrity ----------------------------------------------------------------------------
    def _digest(self, f, commit: _Commit, *, embeddings: bool, vectors: np.ndarray | None = None) -> tuple[int, int]:
        """(names, embeddings) sums of the committed rows and text, read from the file."""
        n = commit.count
        dn = de = 0
        for a in range(0, n, _DIGEST_BLOCK_ROWS):
            b = min(n, a + _DIGEST_BLOCK_ROWS)
            dn += _row_hash_sum(
                _detail_rows(
                    f["lengths"][a:b], f["box"][a:b], f["score"][a:b], f["added"][a:b], f["content_hash"][a:b]
                ),
                a,
            )
            if embeddings:
                block = vectors[a:b] if vectors is not None else f["embeddings"][a:b]
                de += _row_hash_sum(np.asarray(block, dtype=np.float16), a)
        step = _DIGEST_BLOCK_ROWS * 64  # text bytes per block, a whole number of words
        for a in range(0, commit.text, step):
            b = min(commit.text, a + step)
            dn += _text_sum(f["text"][a:b], a // 8)
        return dn & _M64, de & _M64

    def _verify(self, f, *, embeddings: bool, vectors: np.ndarray | None = None) -> _Commit:
        """Refuse a file whose rows or identity no longer match its digest (InputError)."""
        commit = self._commit_of(f)
        bad = []
        if commit.meta != _meta_hash(f.attrs):
            bad.append("its model or schema")
        lengths = np.asarray(f["lengths"][: commit.count], dtype=np.int64)
        if int(lengths.sum()) != commit.text:
            bad.append("names")
        else:
            dn, de = self._digest(f, commit, embeddings=embeddings, vectors=vectors)
            if dn != commit.names:
                bad.append("names")
            if embeddings and de != commit.embeddings:
                bad.append("embeddings")
        if bad:
            raise InputError(
                f"gallery {self.path} failed its integrity check: {' and '.join(bad)} changed since they were written",
                hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
            )
        return commit

    def verify(self) -> dict:
        """Full integrity check of every committed row (``kface gallery --check``).

        Raises :class:`InputError` for a changed file, and for a schema 1 file that has no digest
        (nothing to check it against: ``kface gallery --upgrade`` signs it).
        """
        with self._open() as f:
            if self._version(f) == 1:
                n = _attr_int(f.attrs["count"])
                if "digest" not in f.attrs:
                    raise InputError(
                        f"gallery {self.path} has no digest (written by an older kface): its {n:,} rows cannot be checked",
                        hint="If you trust it, `kface gallery --upgrade` converts and signs it.",
                    )
                _V1(self, f).verify(embeddings=True)
                return {"templates": n, "verified": True, "rows_checked": n, "schema_version": 1}
            commit = self._verify(f, embeddings=True)
            return {
                "templates": commit.count,
                "verified": True,
                "rows_checked": commit.count,
                "schema_version": SCHEMA_VERSION,
            }

    # reading ------------------------------------------------------------------------------
    def facts(self) -> GalleryFacts:
        with self._open() as f:
            rows = self._read(f, embeddings=False, details=False)
            m = self._model_of(f)
            return GalleryFacts(
                path=self.path,
                schema_version=self._version(f),
                templates=len(rows),
                identities=len(set(rows.names)),
                capacity=int(f["embeddings"].shape[0]),
                embedding_size=m.embedding_size,
                fingerprint=m.fingerprint,
                network=m.network,
                model_source=m.source,
                created=float(f.attrs.get("created", 0.0)),
                checksum=rows.checksum,
                file_bytes=self.path.stat().st_size,
            )

    def read(self, *, embeddings: bool = True, details: bool = False) -> GalleryRows:
        """The committed rows, verified: names always; embeddings (float32) and the other columns on request."""
        with self._open() as f:
            return self._read(f, embeddings=embeddings, details=details)

    def _read(self, f, *, embeddings: bool, details: bool) -> GalleryRows:
        if self._version(f) == 1:
            self._warn_old()
            return _V1(self, f).read(embeddings=embeddings, details=details)
        commit = self._commit_of(f)
        n = commit.count
        stored = f["embeddings"][:n] if embeddings else None
        commit = self._verify(f, embeddings=embeddings, vectors=stored)
        lengths = np.asarray(f["lengths"][:n], dtype=np.int64).reshape(n, 2)
        text = bytes(f["text"][: commit.text])
        ends = np.cumsum(lengths.reshape(-1))
        starts = ends - lengths.reshape(-1)
        names = [_text(text[s:e]) for s, e in zip(starts[0::2].tolist(), ends[0::2].tolist())]
        rows = GalleryRows(names=names, checksum=commit.stamp, index_tag=commit.index)
        if embeddings:
            rows.embeddings = _unit(stored)
        if details:
            rows.sources = [_text(text[s:e]) for s, e in zip(starts[1::2].tolist(), ends[1::2].tolist())]
            rows.boxes = np.asarray(f["box"][:n], dtype=np.float32).reshape(n, 4)
            rows.scores = np.asarray(f["score"][:n], dtype=np.float32)
            rows.added = np.asarray(f["added"][:n], dtype=np.float64)
            rows.hashes = [bytes(h).hex() for h in f["content_hash"][:n]]
        return rows

    def _warn_old(self) -> None:
        key = str(self.path.resolve())
        if key in _warned_old:
            return
        _warned_old.add(key)
        from kface_cli.console import warn

        warn(
            f"gallery {self.path} has the older format (schema 1: 2.5x larger, its digest covers less); "
            f"`kface gallery --upgrade --gallery {self.path}` converts it (the original is kept)"
        )

    def identities(self) -> dict[str, int]:
        """Identity name -> number of templates, sorted by name."""
        names = self.read(embeddings=False).names
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items()))

    def hashes(self) -> set[str]:
        return set(self.read(embeddings=False, details=True).hashes or [])

    def schema_version(self) -> int:
        with self._open() as f:
            return self._version(f)

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

    def _write_block(self, block: _Block) -> None:
        """Write rows into pre-allocated room, fsync, then commit the digest record last."""
        try:
            with self._open("r+") as f:
                commit = self._commit_of(f)
                start, end = commit.count, commit.count + len(block)
                assert end <= f["embeddings"].shape[0], "append called without room"
                lengths = block.lengths()
                text = np.frombuffer(block.text(), dtype=np.uint8)
                t0, t1 = commit.text, commit.text + len(text)
                assert t1 <= f["text"].shape[0], "append called without text room"
                f["embeddings"][start:end] = block.embeddings
                f["lengths"][start:end] = lengths
                f["box"][start:end] = block.box
                f["score"][start:end] = block.score
                f["added"][start:end] = block.added
                f["content_hash"][start:end] = block.hashes
                if len(text):
                    f["text"][t0:t1] = text
                # The digest grows by this batch's rows and text: the word text starts in may hold
                # committed bytes already (take out its old contribution, add it back complete).
                w0 = t0 // 8
                head = np.asarray(f["text"][w0 * 8 : t0], dtype=np.uint8)
                dn = (
                    commit.names
                    + _row_hash_sum(_detail_rows(lengths, block.box, block.score, block.added, block.hashes), start)
                    - _text_sum(head, w0)
                    + _text_sum(np.concatenate([head, text]), w0)
                )
                de = commit.embeddings + _row_hash_sum(block.embeddings, start)
                f.flush()
                _fsync_file(self.path)
                # The commit: one attribute; readers see the new rows only from here on.
                new = _Commit(end, t1, commit.meta, dn & _M64, de & _M64, commit.index)
                f.attrs["digest"] = new.format()
                f.flush()
            _fsync_file(self.path)
        except (OSError, ValueError, RuntimeError) as e:  # a full disk: the rows in flight are not counted
            if _disk_full(e):
                raise DiskFullError(f"the disk is full: cannot write {self.path}", hint=_BATCH_HINT) from None
            if isinstance(e, OSError):
                from kface_cli.atomic import storage_error

                raise (storage_error(e, self.path) or e) from None
            raise

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

    def bind_index(self, built_from: str, tag: int) -> bool:
        """Record ``tag`` (a hash of the search index's description) in the digest, if the rows are still ``built_from``.

        The caller holds the writer lock (:func:`writer_lock`). Returns False when it could not
        be recorded (a schema 1 file, or the gallery changed since): the index is then not
        trusted next time. A full disk or read-only file raises as any write does.
        """
        self._refuse_read_only()
        try:
            with self._open("r+") as f:
                if self._version(f) != SCHEMA_VERSION:
                    return False
                commit = self._commit_of(f)
                if commit.stamp != built_from:
                    return False
                f.attrs["digest"] = _Commit(
                    commit.count, commit.text, commit.meta, commit.names, commit.embeddings, tag & ((1 << 128) - 1)
                ).format()
                f.flush()
            _fsync_file(self.path)
        except (OSError, ValueError, RuntimeError) as e:
            if _disk_full(e):
                raise DiskFullError(f"the disk is full: cannot write {self.path}") from None
            if isinstance(e, OSError):
                from kface_cli.atomic import storage_error

                raise (storage_error(e, self.path) or e) from None
            raise
        return True

    def _rewrite(self, capacity: int, *, keep: np.ndarray | None = None, text_room: int | None = None) -> None:
        """Copy the committed rows (those in ``keep``) into a new file and rename it over this one."""
        with self._open() as f:
            model = self._model_of(f)
            created = float(f.attrs.get("created", time.time()))
            source = _V1(self, f) if self._version(f) == 1 else _V2(self, f)
            self._write_new(model, capacity, created=created, source=source, keep=keep, text_room=text_room)

    def _write_new(
        self,
        model: ModelInfo,
        capacity: int,
        *,
        created: float,
        source=None,
        keep: np.ndarray | None = None,
        text_room: int | None = None,
        extra: _Block | None = None,
    ) -> None:
        """Write a complete gallery file next to ``self.path`` and atomically rename it into place
        (the kept rows of ``source``, then the ``extra`` rows)."""
        from kface_cli.atomic import atomic_path

        h5py = _h5py()
        n_src = source.count if source is not None else 0
        n_keep = int(keep.sum()) if keep is not None else n_src
        capacity = _round_capacity(max(capacity, n_keep + (len(extra) if extra is not None else 0)))
        text_room = _round_text(max(int(text_room or 0), 1))
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else FILE_MODE  # a rewrite keeps the mode
        try:
            with atomic_path(self.path, mode=mode) as tmp:
                with h5py.File(tmp, "w") as g:
                    _create_datasets(g, capacity, model.embedding_size, text_room)
                    g.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
                    g.attrs["embedding_size"] = np.int64(model.embedding_size)
                    g.attrs["fingerprint"] = model.fingerprint
                    g.attrs["network"] = model.network
                    g.attrs["model_source"] = model.source
                    g.attrs["created"] = float(created)
                    meta = _meta_hash(g.attrs)
                    g.attrs["digest"] = _Commit(0, 0, meta, 0, 0, 0).format()
                    if source is not None:
                        for block in source.blocks(keep):
                            if len(block.text()) + self._commit_text(g) > g["text"].shape[0]:
                                g["text"].resize((_round_text(self._commit_text(g) + len(block.text())),))
                            _write_into(g, block)
                        if keep is None and isinstance(source, _V2):  # same rows: the bound index stays valid
                            c = self._commit_of(g)
                            if c.stamp == source.commit.stamp:
                                g.attrs["digest"] = _Commit(
                                    c.count, c.text, c.meta, c.names, c.embeddings, source.commit.index
                                ).format()
                    if extra is not None and len(extra):
                        if len(extra.text()) + self._commit_text(g) > g["text"].shape[0]:
                            g["text"].resize((_round_text(self._commit_text(g) + len(extra.text())),))
                        _write_into(g, extra)
                _fsync_file(tmp)
        except (ValueError, RuntimeError, OSError) as e:  # h5py reports some failed writes as ValueError
            if _disk_full(e):
                raise DiskFullError(f"the disk is full: cannot write {self.path}", hint=_REWRITE_HINT) from None
            raise

    def _commit_text(self, g) -> int:
        return self._commit_of(g).text


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
