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
from collections.abc import Iterable, Iterator
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
    except OSError as e:  # nothing was written: the place itself takes no files
        existing = next((p for p in target.parents if p.exists()), None)
        reason = f"{existing} is a file, not a folder" if existing and not existing.is_dir() else e.strerror or e
        raise storage_error(e, target) or KFaceError(
            f"cannot write {target}: {reason}", hint="Write it somewhere else: a folder where files can be created."
        ) from None
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


# -- outputs never overwrite what kface reads ---------------------------------------------------

#: File name endings of model files (a model is never overwritten by another command's output).
MODEL_SUFFIXES = (".onnx", ".pth", ".pt", ".ts", ".ckpt", ".safetensors")
#: What :func:`protected_kind` calls each kind of file that an output option never overwrites.
GALLERY_KIND = "kface gallery or an HDF5 file kface did not write"
ONNX_KIND, TORCHSCRIPT_KIND, TORCH_KIND = "ONNX model", "TorchScript model", "model"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: The first bytes (HDF5 user block) of the embeddings files ``kface embed --out x.h5`` writes:
#: the one kind of HDF5 file an output may replace.
EMBEDDINGS_MARKER = b"kface-embeddings\n"
EMBEDDINGS_USERBLOCK = 512


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (hard links)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
        return False


def protected_kind(path: str | Path) -> str | None:
    """The kind of an existing file no output may overwrite (a kface gallery or a model), or None.

    Judged by content, not by name: an HDF5 file (a gallery; the embeddings files of ``kface
    embed`` start with :data:`EMBEDDINGS_MARKER` instead), a torch archive (TorchScript or
    weights), a file named like a model.
    """
    import zipfile

    path = Path(path)
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(8)
        if head == _HDF5_MAGIC:  # a gallery, or HDF5 data kface did not write (h5py is not a core import)
            return GALLERY_KIND
        if head == EMBEDDINGS_MARKER[:8]:  # `kface embed --out x.h5` output: may be written again
            return None
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return TORCHSCRIPT_KIND
            if any(n.endswith("data.pkl") for n in names):
                return TORCH_KIND
            return None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # unreadable: the suffix decides
    if path.suffix.lower() == ".onnx":
        return ONNX_KIND
    if path.suffix.lower() in MODEL_SUFFIXES:
        return TORCH_KIND
    return None


def check_output(
    out: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    option: str = "--out",
    may_replace: Iterable[str] = (),
) -> Path:
    """Refuse an output file that would overwrite an input, a kface gallery or a model: one line.

    ``inputs``: the files (and folders) the command reads; ``out`` may not be one of them, by
    resolved path or by file identity (a hard link, a symlink), nor an existing photo inside an
    input folder. An existing gallery or model is never overwritten, input or not, except the
    kinds in ``may_replace`` (``kface export`` writes a model over an earlier export).
    Returns ``out``. Every command that writes an output file calls this before its work.
    """
    from kface_cli.errors import InputError

    out = Path(out).expanduser()
    hint = "Choose another file name: kface never writes an output over what it reads, a gallery or a model."
    for given in inputs:
        if given is None:
            continue
        given = Path(given).expanduser()
        if same_file(out, given):
            raise InputError(
                f"{option} {out} is also an input of this command ({given}); refusing to overwrite it", hint=hint
            )
        if given.is_dir() and out.is_file() and not out.is_symlink():
            try:
                inside = out.resolve().is_relative_to(given.resolve())
            except (OSError, RuntimeError):
                inside = False
            if inside and out.suffix.lower() in _PHOTO_SUFFIXES:
                raise InputError(
                    f"{option} {out} is a photo in the input folder {given}; refusing to overwrite it", hint=hint
                )
    kind = protected_kind(out)
    if kind is not None and kind not in set(may_replace):
        raise InputError(f"{option} {out} is a {kind}; refusing to overwrite it", hint=hint)
    return out


def check_output_folder(folder: str | Path, *, inputs: Iterable[str | Path], option: str) -> Path:
    """Refuse an output folder that holds input photos (their copies would overwrite them)."""
    from kface_cli.errors import InputError

    folder = Path(folder).expanduser()
    for given in inputs:
        given = Path(given).expanduser()
        parent = given if given.is_dir() else given.parent
        if same_file(folder, parent):
            raise InputError(
                f"{option} {folder} holds the input photos ({given}): the written copies would overwrite them",
                hint="Write them to another folder.",
            )
    return folder


_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".mp4", ".avi", ".mov", ".mkv")
