"""Atomic writes: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write never destroys what was saved.
A full disk or a read-only folder becomes one clear :class:`~kface_cli.errors.KFaceError`
(:func:`storage_error`), never an ``OSError`` traceback.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from kface_cli.errors import DiskFullError, KFaceError, ReadOnlyError

#: errno values that mean "no room left" and "you may not write here".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: What a full disk means for kface's files: every write is atomic, so nothing saved is damaged.
DISK_FULL_HINT = "Nothing already saved was lost (every write is atomic); free some space and run the command again."


def storage_error(
    e: OSError, path: str | Path, *, disk_full_hint: str | None = None, read_only_hint: str | None = None
) -> KFaceError | None:
    """The one-line error for a failed write of ``path`` (disk full, read-only), or None for other errors."""
    path = Path(path)
    if e.errno in DISK_FULL_ERRNOS:
        return DiskFullError(f"the disk is full: cannot write {path}", hint=disk_full_hint or DISK_FULL_HINT)
    if e.errno in READ_ONLY_ERRNOS:
        reason = "the filesystem is read-only" if e.errno == errno.EROFS else "permission denied"
        folder = next((p for p in path.absolute().parents if p.exists()), path.parent)  # the one that stopped us
        return ReadOnlyError(
            f"cannot write {path}: {reason}",
            hint=read_only_hint or f"kface changes nothing there; make {folder} writable, or write somewhere else.",
        )
    return None


def os_error(e: OSError) -> KFaceError | None:
    """The one line for an ``OSError`` that escaped a command: a full disk or a read-only place.

    Names the file the system call was about (``e.filename``), or standard output when there is
    none (a full disk behind ``kface ... > out.json``). Other errors give None (a real bug: the
    traceback stays).
    """
    if e.errno not in DISK_FULL_ERRNOS | READ_ONLY_ERRNOS:
        return None
    if e.filename is None:
        if e.errno in DISK_FULL_ERRNOS:
            return DiskFullError(
                "the disk is full: cannot write the results to standard output",
                hint="Free some space (or write the output elsewhere) and run the command again.",
            )
        return None
    path = Path(os.fsdecode(e.filename))
    if e.errno in READ_ONLY_ERRNOS and e.errno != errno.EROFS and path.exists() and not os.access(path, os.W_OK):
        if path.is_file() and not os.access(path, os.R_OK):
            return ReadOnlyError(f"cannot read {path}: permission denied", hint="Check the file's permissions.")
    return storage_error(e, path)


def special_file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is ("a named pipe (FIFO)"...), or None for a regular
    file. Reading a FIFO blocks until a writer comes, a device never ends: kface reads neither."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def ensure_dir(folder: str | Path) -> Path:
    """``mkdir -p folder``; a read-only place or a full disk is one line naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise KFaceError(f"cannot make folder {folder}: a file of that name is in the way") from None
    except OSError as e:
        raise (storage_error(e, folder) or e) from None
    return folder


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(target: str | Path, suffix: str | None = None, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    ``suffix`` defaults to the target's own suffix, for libraries that pick a format by extension
    (``cv2.imwrite``, ``torch.onnx.export``). ``mode`` defaults to 0666 less the umask.
    A full disk (anywhere in the write) or a folder that cannot be written raises
    :class:`~kface_cli.errors.DiskFullError` / :class:`~kface_cli.errors.ReadOnlyError`; the
    target is then unchanged.
    """
    target = Path(target)
    if target.is_dir():  # e.g. `--csv results/`: refused before anything is written
        raise KFaceError(
            f"cannot write {target}: it is a folder", hint="Name a file (for example results.csv), not a folder."
        )
    if mode is None:
        mode = 0o666 & ~_umask()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
        )
    except OSError as e:
        raise (storage_error(e, target) or e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:  # the body's own write failed: only "disk full" is about the target
            if e.errno in DISK_FULL_ERRNOS:
                raise storage_error(e, target) from None
            raise
        try:
            # mkstemp creates 0600 files; give the result the permissions a plain open() would
            # (files that must stay private, such as the gallery, set their own mode).
            if tmp_path.exists() and mode is not None:
                os.chmod(tmp_path, mode)
            os.replace(tmp_path, target)
        except OSError as e:
            raise (storage_error(e, target) or e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    target: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """``open()`` for writing, atomically: the target appears complete or not at all.

    Text is bytes-safe: a name that came from a non-UTF-8 file name (kept as surrogates by
    ``surrogateescape``) is written as the bytes it was, so reading it back gives it unchanged.
    """
    binary = "b" in mode
    with atomic_path(target) as tmp:
        with open(
            tmp,
            mode,
            encoding=None if binary else encoding,
            newline=None if binary else newline,
            errors=None if binary else "surrogateescape",
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(target: str | Path, text: str) -> None:
    with atomic_open(target, "w") as f:
        f.write(text)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_open(target, "wb") as f:
        f.write(data)
