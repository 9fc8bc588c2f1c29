"""The gallery file: every enrolled face template in one HDF5 file, safe against crashes.

Layout of ``gallery.h5`` (schema 1). Row ``i`` of every dataset describes template ``i``; only the
first ``attrs["count"]`` rows are valid (the rest is pre-allocated room)::

    embeddings   (capacity, D) float32   unit vectors, chunked 1024 rows
    name         (capacity,)   S256      identity name, UTF-8 (Korean names round-trip)
    source       (capacity,)   S512      photo the template came from, UTF-8
    box          (capacity, 4) float32   face box x, y, w, h in the photo (NaN for aligned crops)
    score        (capacity,)   float32   detection score (NaN for aligned crops)
    added        (capacity,)   float64   when it was enrolled, Unix seconds
    content_hash (capacity,)   S64       SHA-256 (hex) of the photo's bytes: re-enrolling it is a no-op
    attrs: schema_version, embedding_size, fingerprint, network, model_source, created,
           count, checksum, digest

``digest`` (``"<rows>:<names>:<embeddings>"``) is verified on every read: a sum, over rows, of
a 64-bit hash of each row (mixed with its position) for the name and content-hash columns, and
one for the embeddings. It is incremental (an append adds only its own rows) and vectorised; any
single changed byte is always caught, several with probability 1 - 2^-64. It guards against
corruption and naive edits, not against someone who recomputes it (nothing unkeyed can).

Why it never corrupts, even on ``kill -9``:

* Every dataset is allocated in full when the file is created (HDF5 "early allocation"), so an
  append writes raw bytes into room that already exists: no chunk index, heap or dataspace
  changes. Strings are fixed-length for the same reason (variable-length strings live in a heap).
* An append writes its rows, flushes and fsyncs, and only then bumps ``count`` (and the
  ``checksum`` chain): readers ignore rows past ``count``, so a batch killed half-way is invisible
  and the next append simply overwrites it.
* Growing past the capacity, removing people and rebuilding are copy-on-write: a new file is
  written beside the old one and renamed over it (``os.replace`` is atomic).
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

The file is created with mode 0600: it holds biometric data. Rewrites keep the mode it has.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.errors import InputError, ModelMismatchError, ReadOnlyError

SCHEMA_VERSION = 1
NAME_BYTES = 256
SOURCE_BYTES = 512
HASH_CHARS = 64  # SHA-256, hex
CHUNK_ROWS = 1024
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
_READ_ONLY_HINT = (
    "identify works as it is; enroll and `kface gallery --remove` need a writable gallery file and folder "
    "(or copy the gallery somewhere writable)."
)

_ROW_FIELDS = ("embeddings", "name", "source", "box", "score", "added", "content_hash")
_EMPTY_CHECKSUM = hashlib.sha256(b"kface-gallery").hexdigest()
_DIGEST_BLOCK_ROWS = 65536
_M64 = (1 << 64) - 1


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
    """Rows read from a gallery (only the fields asked for are filled)."""

    names: list[str]
    embeddings: np.ndarray | None = None  # (N, D) float32
    sources: list[str] | None = None
    boxes: np.ndarray | None = None  # (N, 4) float32
    scores: np.ndarray | None = None  # (N,) float32
    added: np.ndarray | None = None  # (N,) float64
    hashes: list[str] | None = None
    checksum: str = ""

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class AppendResult:
    added: int
    duplicates: list[str] = field(default_factory=list)  # sources skipped: content hash already present


# -- low-level helpers -------------------------------------------------------------------------


def _h5py():
    import h5py

    return h5py


def lock_path(gallery: Path) -> Path:
    return gallery.with_name(gallery.name + ".lock")


@contextmanager
def writer_lock(gallery: Path) -> Iterator[None]:
    """Hold the exclusive writer lock on the lock file beside ``gallery`` (see the module doc).

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
            _say_waiting(gallery)
            lock.acquire(timeout=LOCK_WAIT_SECONDS, poll_interval=_LOCK_POLL_SECONDS)
    except Timeout:
        raise _busy(gallery) from None
    except OSError as e:
        raise (storage_error(e, gallery, read_only_hint=_READ_ONLY_HINT) or e) from None
    try:
        yield
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


def _encode(text: str, size: int, what: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > size:
        raise InputError(
            f"{what} is too long for the gallery ({len(data)} bytes of UTF-8, at most {size}): {text[:60]!r}..."
        )
    return data


def _encode_source(text: str) -> bytes:
    """Paths longer than the column keep their end (the file name), cut at a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= SOURCE_BYTES:
        return data
    tail = data[-(SOURCE_BYTES - 3) :]
    while tail and (tail[0] & 0xC0) == 0x80:  # skip UTF-8 continuation bytes
        tail = tail[1:]
    return b"..." + tail


def _decode(values: np.ndarray) -> list[str]:
    return [bytes(v).decode("utf-8", errors="replace") for v in values]


def _chain_checksum(previous: str, hashes: Sequence[str], embeddings: np.ndarray, names: Sequence[str]) -> str:
    h = hashlib.sha256(previous.encode())
    for n, c in zip(names, hashes):
        h.update(n.encode("utf-8") + b"\0" + c.encode() + b"\0")
    h.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return h.hexdigest()


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


def _name_rows(names: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    n = len(names)
    a = np.asarray(names, dtype=f"S{NAME_BYTES}").view(np.uint8).reshape(n, NAME_BYTES)
    b = np.asarray(hashes, dtype=f"S{HASH_CHARS}").view(np.uint8).reshape(n, HASH_CHARS)
    return np.concatenate([a, b], axis=1)


def _digest_rows(
    f,
    start: int,
    stop: int,
    *,
    embeddings: bool = True,
    names: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> tuple[int, int]:
    """(names, embeddings) digest contributions of rows ``start:stop`` of an open file.

    ``embeddings=False`` skips the embeddings (their digest is then 0). ``names`` / ``vectors``:
    the file's name and embedding rows from ``start`` already read by the caller (not read again).
    """
    dn = de = 0
    for a in range(start, stop, _DIGEST_BLOCK_ROWS):
        b = min(stop, a + _DIGEST_BLOCK_ROWS)
        block_names = names[a - start : b - start] if names is not None else f["name"][a:b]
        dn += _row_hash_sum(_name_rows(block_names, f["content_hash"][a:b]), a)
        if embeddings:
            block = vectors[a - start : b - start] if vectors is not None else f["embeddings"][a:b]
            de += _row_hash_sum(np.asarray(block, dtype=np.float32), a)
    return dn & _M64, de & _M64


def _format_digest(count: int, dn: int, de: int) -> np.bytes_:
    return np.bytes_(f"{count:020d}:{dn:016x}:{de:016x}".encode("ascii"))  # fixed length: rewritten in place


def _digest_of(f) -> tuple[int, int, int] | None:
    """(rows covered, names digest, embeddings digest), or None for a file written before digests."""
    value = f.attrs.get("digest")
    if value is None:
        return None
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        c, dn, de = text.split(":")
        return int(c), int(dn, 16), int(de, 16)
    except (ValueError, UnicodeDecodeError):
        return (-1, 0, 0)  # unreadable digest: fails verification


def _checksum_of(f) -> str:
    value = f.attrs.get("checksum", _EMPTY_CHECKSUM)
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _create_datasets(f, capacity: int, embedding_size: int) -> None:
    """Create every row dataset with ``capacity`` rows allocated up front (see module docstring)."""
    h5py = _h5py()
    from h5py import h5d, h5p

    def early():
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)
        return dcpl

    rows = max(1, min(CHUNK_ROWS, capacity))
    specs = {
        "embeddings": ((capacity, embedding_size), (None, embedding_size), (rows, embedding_size), np.float32, 0.0),
        "name": ((capacity,), (None,), (rows,), h5py.string_dtype("utf-8", NAME_BYTES), None),
        "source": ((capacity,), (None,), (rows,), h5py.string_dtype("utf-8", SOURCE_BYTES), None),
        "box": ((capacity, 4), (None, 4), (rows, 4), np.float32, np.nan),
        "score": ((capacity,), (None,), (rows,), np.float32, np.nan),
        "added": ((capacity,), (None,), (rows,), np.float64, 0.0),
        "content_hash": ((capacity,), (None,), (rows,), h5py.string_dtype("ascii", HASH_CHARS), None),
    }
    for name, (shape, maxshape, chunks, dtype, fill) in specs.items():
        kw = {"fillvalue": fill} if fill is not None else {}
        f.create_dataset(name, shape=shape, maxshape=maxshape, chunks=chunks, dtype=dtype, dcpl=early(), **kw)


def _row_arrays(batch: Sequence[Template], model: ModelInfo) -> dict[str, np.ndarray]:
    """The rows of ``batch`` as the arrays written into each row field (embeddings as float32)."""
    emb = np.stack([np.asarray(t.embedding, dtype=np.float32).reshape(-1) for t in batch])  # (B, D)
    assert emb.shape[1] == model.embedding_size, f"embedding size {emb.shape[1]} != gallery's {model.embedding_size}"
    h5py = _h5py()
    return {
        "embeddings": emb,
        "name": np.array(
            [_encode(t.name, NAME_BYTES, "identity name") for t in batch], dtype=h5py.string_dtype("utf-8", NAME_BYTES)
        ),
        "source": np.array([_encode_source(t.source) for t in batch], dtype=h5py.string_dtype("utf-8", SOURCE_BYTES)),
        "box": np.array([t.box for t in batch], dtype=np.float32).reshape(-1, 4),
        "score": np.array([t.score for t in batch], dtype=np.float32),
        "added": np.full(len(batch), time.time()),
        "content_hash": np.array(
            [t.content_hash.encode("ascii") for t in batch], dtype=h5py.string_dtype("ascii", HASH_CHARS)
        ),
    }


def _row_nbytes(dataset) -> int:
    return int(dataset.dtype.itemsize * np.prod(dataset.shape[1:], dtype=np.int64))


def _round_capacity(n: int) -> int:
    return max(CHUNK_ROWS, -(-n // CHUNK_ROWS) * CHUNK_ROWS)


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
            self._write_new(model, capacity, created=time.time(), source=None, keep=None)

    def _open(self, mode: str = "r"):
        """Open the HDF5 file; missing, unreadable or read-only files become one clear error.

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
        except BaseException:
            f.close()
            raise
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

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer lock, after refusing a gallery file without write permission (never rewritten)."""
        with writer_lock(self.path):
            try:
                st = self.path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and not st.st_mode & 0o222:
                raise ReadOnlyError(
                    f"gallery {self.path} is read-only (mode {st.st_mode & 0o777:04o}): kface will not change it",
                    hint="Make it writable (chmod u+w) to enroll into it or remove people; identify works as it is.",
                )
            yield

    def _validate(self, f) -> None:
        missing = [k for k in _ROW_FIELDS if k not in f]
        missing += [
            f"attr {a}" for a in ("schema_version", "embedding_size", "fingerprint", "count") if a not in f.attrs
        ]
        if missing:
            raise InputError(
                f"{self.path} is not a kface gallery (missing {', '.join(missing)})",
                hint="Pass the gallery written by `kface enroll`, or enroll into a new file.",
            )
        h5py = _h5py()
        outside = [  # links, external raw data or virtual datasets would make kface read other files
            k
            for k in _ROW_FIELDS
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
        version = int(f.attrs["schema_version"])
        if version > SCHEMA_VERSION:
            raise InputError(
                f"gallery {self.path} has schema {version}, newer than this kface understands ({SCHEMA_VERSION})",
                hint="Upgrade kface.",
            )
        count = int(f.attrs["count"])
        if not 0 <= count <= f["embeddings"].shape[0] or any(f[k].shape[0] < count for k in _ROW_FIELDS):
            raise InputError(
                f"gallery {self.path} is damaged (count {count} does not fit its datasets)",
                hint="Re-enroll into a new --gallery.",
            )
        # kface writes every row uncompressed and allocated: a file that claims more rows than it
        # stores (compressed or sparse datasets) would make a read allocate memory it never had.
        short = [k for k in _ROW_FIELDS if f[k].id.get_storage_size() < count * _row_nbytes(f[k])]
        if short:
            raise InputError(
                f"gallery {self.path} claims {count:,} rows but stores fewer ({', '.join(short)})",
                hint="It was not written by kface; re-enroll into a new --gallery.",
            )

    def model(self) -> ModelInfo:
        with self._open() as f:
            return self._model_of(f)

    @staticmethod
    def _model_of(f) -> ModelInfo:
        a = f.attrs
        return ModelInfo(
            fingerprint=str(a["fingerprint"]),
            embedding_size=int(a["embedding_size"]),
            network=str(a.get("network", "")),
            source=str(a.get("model_source", "")),
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

    # reading ------------------------------------------------------------------------------
    def facts(self) -> GalleryFacts:
        with self._open() as f:
            n = int(f.attrs["count"])
            names = set(_decode(f["name"][:n])) if n else set()
            m = self._model_of(f)
            return GalleryFacts(
                path=self.path,
                schema_version=int(f.attrs["schema_version"]),
                templates=n,
                identities=len(names),
                capacity=int(f["embeddings"].shape[0]),
                embedding_size=m.embedding_size,
                fingerprint=m.fingerprint,
                network=m.network,
                model_source=m.source,
                created=float(f.attrs.get("created", 0.0)),
                checksum=_checksum_of(f),
                file_bytes=self.path.stat().st_size,
            )

    def read(self, *, embeddings: bool = True, details: bool = False) -> GalleryRows:
        """The committed rows: names always; embeddings and the other columns on request."""
        with self._open() as f:
            return self._read(f, embeddings=embeddings, details=details)

    def verify(self) -> dict:
        """Full integrity check of every committed row (``kface gallery --check``)."""
        with self._open() as f:
            n = int(f.attrs["count"])
            digest = _digest_of(f)
            if digest is not None:
                self._verify(f, embeddings=True)
            return {"templates": n, "verified": digest is not None, "rows_checked": min(n, digest[0]) if digest else 0}

    def _verify(
        self, f, *, embeddings: bool, names: np.ndarray | None = None, vectors: np.ndarray | None = None
    ) -> None:
        """Refuse a file whose rows no longer match the digest written with them (InputError).

        ``names`` / ``vectors``: the committed rows, when the caller has read them already.
        """
        digest = _digest_of(f)
        if digest is None:
            return  # written before digests existed: nothing to check against (the next write adds one)
        covered, want_n, want_e = digest
        n = int(f.attrs["count"])
        bad = []
        if not 0 <= covered <= n:
            bad.append("its digest")
        else:
            dn, de = _digest_rows(f, 0, covered, embeddings=embeddings, names=names, vectors=vectors)
            if dn != want_n:
                bad.append("names")
            if embeddings and de != want_e:
                bad.append("embeddings")
        if bad:
            raise InputError(
                f"gallery {self.path} failed its integrity check: {' and '.join(bad)} changed since they were written",
                hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
            )

    def _read(self, f, *, embeddings: bool, details: bool) -> GalleryRows:
        n = int(f.attrs["count"])
        raw_names = f["name"][:n]
        vectors = (
            np.asarray(f["embeddings"][:n], dtype=np.float32).reshape(n, f["embeddings"].shape[1])
            if embeddings
            else None
        )
        self._verify(f, embeddings=embeddings, names=raw_names, vectors=vectors)  # on the rows just read
        rows = GalleryRows(names=_decode(raw_names), checksum=_checksum_of(f))
        if embeddings:
            rows.embeddings = vectors
        if details:
            rows.sources = _decode(f["source"][:n])
            rows.boxes = np.asarray(f["box"][:n], dtype=np.float32).reshape(n, 4)
            rows.scores = np.asarray(f["score"][:n], dtype=np.float32)
            rows.added = np.asarray(f["added"][:n], dtype=np.float64)
            rows.hashes = [bytes(h).decode("ascii") for h in f["content_hash"][:n]]
        return rows

    def identities(self) -> dict[str, int]:
        """Identity name -> number of templates, sorted by name."""
        names = self.read(embeddings=False).names
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items()))

    def hashes(self) -> set[str]:
        with self._open() as f:
            n = int(f.attrs["count"])
            return {bytes(h).decode("ascii") for h in f["content_hash"][:n]}

    # writing ------------------------------------------------------------------------------
    def append(self, templates: Sequence[Template], model: ModelInfo, *, skip_duplicates: bool = True) -> AppendResult:
        """Commit one batch of templates (creating the gallery if needed). Crash-safe; see module doc.

        Templates whose content hash is already in the gallery (or earlier in the batch) are
        skipped when ``skip_duplicates``: re-enrolling a photo is a no-op.
        """
        with self._writing():
            if not self.path.exists():
                self._write_new(model, _round_capacity(len(templates)), created=time.time(), source=None, keep=None)
            with self._open("r") as f:
                self._check(self._model_of(f), model)
                count = int(f.attrs["count"])
                capacity = int(f["embeddings"].shape[0])
                known = {bytes(h).decode("ascii") for h in f["content_hash"][:count]} if skip_duplicates else set()
            batch: list[Template] = []
            duplicates: list[str] = []
            for t in templates:
                if skip_duplicates and t.content_hash in known:
                    duplicates.append(t.source)
                    continue
                known.add(t.content_hash)
                batch.append(t)
            if not batch:
                return AppendResult(0, duplicates)
            if count + len(batch) > capacity:
                new_capacity = _round_capacity(max(count + len(batch), int(capacity * GROWTH_FACTOR)))
                self._rewrite(new_capacity, keep=None)
            self._write_rows(batch, model)
            return AppendResult(len(batch), duplicates)

    def _write_rows(self, batch: Sequence[Template], model: ModelInfo) -> None:
        """Write rows into pre-allocated room, fsync, then commit ``count`` and ``checksum`` last."""
        rows = _row_arrays(batch, model)
        emb, names, hashes = rows["embeddings"], [t.name for t in batch], [t.content_hash for t in batch]
        try:
            with self._open("r+") as f:
                start = int(f.attrs["count"])
                end = start + len(batch)
                assert end <= f["embeddings"].shape[0], "append called without room"
                for field_name, values in rows.items():
                    f[field_name][start:end] = values
                f.flush()
                _fsync_file(self.path)
                # The commit: readers see the new rows only from here on.
                f.attrs["checksum"] = np.bytes_(_chain_checksum(_checksum_of(f), hashes, emb, names).encode("ascii"))
                f.attrs["count"] = np.int64(end)
                f.flush()
                # The digest last: a crash before it leaves it covering fewer rows (still verifiable).
                digest = _digest_of(f)
                if digest is not None and digest[0] == start:
                    dn, de = _digest_rows(f, start, end)
                    f.attrs["digest"] = _format_digest(end, (digest[1] + dn) & _M64, (digest[2] + de) & _M64)
                else:
                    f.attrs["digest"] = _format_digest(end, *_digest_rows(f, 0, end))
                f.flush()
            _fsync_file(self.path)
        except OSError as e:  # a full disk: the rows in flight are not counted, nothing committed is touched
            from kface_cli.atomic import storage_error

            raise (storage_error(e, self.path, disk_full_hint=_BATCH_HINT) or e) from None

    def reserve(self, rows: int, model: ModelInfo) -> None:
        """Make room for ``rows`` templates in all (creating the gallery if needed).

        Call it before a large enrolment: the file then grows once, to the size needed, instead
        of by :data:`GROWTH_FACTOR` steps (each a full copy-on-write rewrite) with up to 50% of
        pre-allocated room left unused at the end.
        """
        with self._writing():
            if not self.path.exists():
                self._write_new(model, _round_capacity(rows), created=time.time(), source=None, keep=None)
                return
            with self._open() as f:
                self._check(self._model_of(f), model)
                capacity = int(f["embeddings"].shape[0])
            if rows > capacity:
                self._rewrite(_round_capacity(rows), keep=None)

    def remove(self, names: Sequence[str]) -> int:
        """Remove every template of the given identities (copy-on-write). Returns how many went."""
        wanted = set(names)
        with self._writing():
            with self._open() as f:
                n = int(f.attrs["count"])
                current = _decode(f["name"][:n])
                capacity = int(f["embeddings"].shape[0])
            keep = np.array([nm not in wanted for nm in current], dtype=bool)
            removed = int((~keep).sum())
            if removed:
                self._rewrite(capacity, keep=keep)
            return removed

    def replace(self, names: Sequence[str], templates: Sequence[Template], model: ModelInfo) -> int:
        """Swap every template of ``names`` for ``templates`` in one copy-on-write rewrite.

        The old rows and the new ones change places in a single atomic rename: an interrupted
        call leaves the gallery as it was. Returns how many old templates went. ``templates``
        must not be empty (a person is never left with none by a replace).
        """
        assert templates, "replace() needs new templates"
        wanted = set(names)
        with self._writing():
            if not self.path.exists():
                self._write_new(model, _round_capacity(len(templates)), created=time.time(), source=None, keep=None)
                self._write_rows(templates, model)
                return 0
            with self._open() as f:
                self._check(self._model_of(f), model)
                n = int(f.attrs["count"])
                keep = np.array([nm not in wanted for nm in _decode(f["name"][:n])], dtype=bool)
                capacity = max(int(f["embeddings"].shape[0]), int(keep.sum()) + len(templates))
                created = float(f.attrs.get("created", time.time()))
                self._write_new(model, capacity, created=created, source=f, keep=keep, extra=templates)
            return int((~keep).sum())

    def compact(self) -> None:
        """Rewrite the file with just enough room for its rows (after large removals)."""
        with self._writing():
            with self._open() as f:
                n = int(f.attrs["count"])
            self._rewrite(_round_capacity(n), keep=None)

    def _rewrite(self, capacity: int, keep: np.ndarray | None) -> None:
        """Copy the committed rows (those in ``keep``) into a new file and rename it over this one."""
        with self._open() as f:
            model = self._model_of(f)
            created = float(f.attrs.get("created", time.time()))
            self._write_new(model, capacity, created=created, source=f, keep=keep)

    def _write_new(
        self,
        model: ModelInfo,
        capacity: int,
        *,
        created: float,
        source,
        keep: np.ndarray | None,
        extra: Sequence[Template] = (),
    ) -> None:
        """Write a complete gallery file next to ``self.path`` and atomically rename it into place
        (the kept rows of ``source``, then the ``extra`` templates)."""
        from kface_cli.atomic import atomic_path

        h5py = _h5py()
        n_src = int(source.attrs["count"]) if source is not None else 0
        n_keep = int(keep.sum()) if keep is not None else n_src
        capacity = _round_capacity(max(capacity, n_keep + len(extra)))
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else FILE_MODE  # a rewrite keeps the mode
        with atomic_path(self.path, mode=mode) as tmp:
            with h5py.File(tmp, "w") as g:
                _create_datasets(g, capacity, model.embedding_size)
                g.attrs["schema_version"] = SCHEMA_VERSION
                g.attrs["embedding_size"] = model.embedding_size
                g.attrs["fingerprint"] = model.fingerprint
                g.attrs["network"] = model.network
                g.attrs["model_source"] = model.source
                g.attrs["created"] = created
                checksum = _EMPTY_CHECKSUM
                out = 0
                for start in range(0, n_src, COPY_BLOCK_ROWS):
                    stop = min(n_src, start + COPY_BLOCK_ROWS)
                    sel = keep[start:stop] if keep is not None else np.ones(stop - start, dtype=bool)
                    k = int(sel.sum())
                    if not k:
                        continue
                    block = {name: source[name][start:stop][sel] for name in _ROW_FIELDS}
                    for name, values in block.items():
                        g[name][out : out + k] = values
                    checksum = _chain_checksum(
                        checksum,
                        [bytes(h).decode("ascii") for h in block["content_hash"]],
                        block["embeddings"],
                        _decode(block["name"]),
                    )
                    out += k
                if keep is None and source is not None and not extra:
                    checksum = _checksum_of(source)  # same rows: the index built for them stays valid
                if extra:
                    rows = _row_arrays(extra, model)
                    for name, values in rows.items():
                        g[name][out : out + len(extra)] = values
                    checksum = _chain_checksum(
                        checksum, [t.content_hash for t in extra], rows["embeddings"], [t.name for t in extra]
                    )
                    out += len(extra)
                g.attrs["checksum"] = np.bytes_(checksum.encode("ascii"))  # fixed-length: rewritten in place
                g.attrs["count"] = np.int64(out)
                g.attrs["digest"] = _format_digest(out, *_digest_rows(g, 0, out))
            _fsync_file(tmp)
