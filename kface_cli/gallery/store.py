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
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kface_cli.errors import DiskFullError, InputError, KFaceError, ReadOnlyError
from kface_cli.gallery.append import GalleryAppends
from kface_cli.gallery.formats import _V1, _V2, _write_into
from kface_cli.gallery.lock import _LOCK_POLL_SECONDS, LOCK_WAIT_SECONDS, _busy, _fsync_file, _say_waiting, writer_lock
from kface_cli.gallery.maintain import GalleryMaintenance
from kface_cli.gallery.read import GalleryReads
from kface_cli.gallery.schema import (
    _BATCH_HINT,
    _FIELDS,
    _M64,
    _READ_ONLY_HINT,
    _REWRITE_HINT,
    _V1_FIELDS,
    CHUNK_ROWS,
    FILE_MODE,
    HASH_BYTES,
    MAX_ATTR_CHARS,
    MAX_EMBEDDING_SIZE,
    MAX_ROWS,
    SCHEMA_VERSION,
    ModelInfo,
    _attr_int,
    _attr_text,
    _Block,
    _Commit,
    _create_datasets,
    _detail_rows,
    _disk_full,
    _h5py,
    _meta_hash,
    _round_capacity,
    _round_text,
    _row_hash_sum,
    _row_nbytes,
    _text_sum,
)


class Gallery(GalleryReads, GalleryAppends, GalleryMaintenance):
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
        self._validate_datasets(f, version, d)
        self._validate_rows(f, version, fields)

    def _validate_datasets(self, f, version: int, d: int) -> None:
        """Each dataset's dimensions, dtype and width (``d``: the embedding size)."""
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

    def _validate_rows(self, f, version: int, fields: tuple[str, ...]) -> None:
        """The datasets agree on the rows, the committed count fits them, and they store what they claim."""
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
