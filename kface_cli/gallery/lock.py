"""One writer at a time: the gallery's lock file, and durable writes (fsync)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kface_cli.errors import InputError
from kface_cli.gallery.schema import _READ_ONLY_HINT, FILE_MODE

#: How long to wait for another kface process that holds the gallery before giving up.
LOCK_WAIT_SECONDS = 600.0


_LOCK_POLL_SECONDS = 0.05


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
