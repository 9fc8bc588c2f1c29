"""Reading zip archives someone else made, safely: the rules every kface reader of zips shares.

Users hand kface zips from elsewhere (K-Face's per-identity zips, pretrained model packs). None is
trusted:

* a member's name is never trusted as a path: absolute names, drive letters and ``..`` parts are
  refused (:func:`is_safe_member_name`), and so are symbolic links (:func:`is_link`);
* a member larger than a limit, or compressed more than :data:`MAX_COMPRESSION_RATIO` to one (a
  "zip bomb"), is refused before a byte of it is decompressed (:func:`too_big`); a member that
  turns out larger than it claimed is cut off while it is being copied.

:func:`extract_all` unpacks a whole archive with these rules, all or nothing: one refused member
refuses the archive, and the caller's folder then holds nothing of it.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from kface_cli.errors import InputError

#: Largest uncompressed:compressed ratio for a member above :data:`RATIO_CHECK_BYTES`. JPEGs
#: barely compress (about 1:1), model weights little more; zip bombs reach 1000:1 and more.
MAX_COMPRESSION_RATIO = 100
#: Members smaller than this are never refused for their ratio (a small text file of blanks is harmless).
RATIO_CHECK_BYTES = 1024 * 1024
#: Bytes copied at a time: memory stays bounded whatever a member's size.
COPY_CHUNK_BYTES = 1024 * 1024


class UnsafeArchiveError(InputError):
    """An archive refused because of one of its members (name, link, size or ratio)."""


def is_safe_member_name(name: str) -> bool:
    """False for names that would escape an output folder if trusted: absolute, drive, or ``..``."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return False
    return ".." not in PurePosixPath(text).parts


def is_link(info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is a symbolic link (its Unix mode, as ``zip --symlinks`` stores it)."""
    return stat.S_ISLNK(info.external_attr >> 16)


def too_big(size: int, compressed: int, max_bytes: int) -> str | None:
    """Why a member of ``size`` bytes (``compressed`` in the zip) is refused, or None."""
    if size > max_bytes:
        return f"{size / 2**20:.0f} MiB, larger than the {max_bytes / 2**20:.0f} MiB limit"
    if size > RATIO_CHECK_BYTES and size > MAX_COMPRESSION_RATIO * max(compressed, 1):
        return f"compressed {size / max(compressed, 1):.0f}:1, more than the {MAX_COMPRESSION_RATIO}:1 limit"
    return None


#: Compression methods Python's zipfile reads (Deflate64, PPMd, AES... are not).
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_METHOD_NAMES = {9: "Deflate64", 98: "PPMd", 99: "AES", 93: "Zstandard", 95: "XZ", 6: "Implode"}


def unreadable_member(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member cannot be read (encrypted, an unsupported compression method such as
    Windows' Deflate64), or None. Checked from the headers, before opening the member."""
    if info.flag_bits & 0x1:
        return "encrypted: kface cannot read password-protected zips; unzip it with its password first"
    if info.compress_type not in _READABLE_METHODS:
        method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        return f"compressed with {method}, which kface cannot read; re-zip it with standard Deflate (or unzip it first)"
    return None


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, is ``root`` or below it (``root`` already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def extract_all(
    archive: str | Path, dest: str | Path, *, max_member_bytes: int, max_total_bytes: int, label: str | None = None
) -> list[str]:
    """Unpack every file of the zip ``archive`` into the folder ``dest`` (created); the names written.

    All or nothing: a member with an unsafe name, a link, one too large or too compressed, a total
    above ``max_total_bytes`` or a damaged member raises :class:`UnsafeArchiveError` (or
    :class:`~kface_cli.errors.InputError` for a damaged zip) and ``dest`` is removed again. Unpack
    into a fresh temporary folder and rename it when this returns. ``label`` names the archive in
    messages (e.g. the URL it came from) instead of its (temporary) file name.
    """
    archive, dest = Path(archive), Path(dest)
    name = label or archive.name
    where = None if label else archive
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise InputError(
            f"{name} is not a readable zip archive: {e}",
            path=where,
            hint="The download is incomplete or the file is not a zip; fetch it again.",
        ) from None
    written: list[str] = []
    try:
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            total = 0
            for info in zf.infolist():  # check everything before writing anything
                if not is_safe_member_name(info.filename):
                    raise UnsafeArchiveError(
                        f"{name} refused: member {info.filename!r} would be written outside its folder",
                        path=where,
                        hint="Archives with absolute paths or '..' in member names are never unpacked.",
                    )
                if is_link(info):
                    raise UnsafeArchiveError(
                        f"{name} refused: member {info.filename!r} is a symbolic link",
                        path=where,
                        hint="Archives with links are never unpacked.",
                    )
                if (why := unreadable_member(info)) is not None:
                    raise InputError(f"{name} refused: member {info.filename!r} is {why}", path=where)
                why = too_big(info.file_size, info.compress_size, max_member_bytes)
                if why is not None:
                    raise UnsafeArchiveError(f"{name} refused: member {info.filename!r} is {why}", path=where)
                total += info.file_size
            if total > max_total_bytes:
                raise UnsafeArchiveError(
                    f"{name} refused: it unpacks to {total / 2**20:.0f} MiB, more than the "
                    f"{max_total_bytes / 2**20:.0f} MiB limit",
                    path=where,
                )
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            for info in infos:
                target = dest / PurePosixPath(info.filename.replace("\\", "/"))
                if not inside(target.parent, root) and target.parent != dest:
                    raise UnsafeArchiveError(f"{name} refused: {info.filename!r} leaves its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                copied = 0
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(COPY_CHUNK_BYTES):
                        copied += len(chunk)
                        if copied > max(info.file_size, 0) or copied > max_member_bytes:
                            raise UnsafeArchiveError(
                                f"{name} refused: member {info.filename!r} is larger than it claims",
                                path=where,
                            )
                        out.write(chunk)
                written.append(info.filename)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, FileExistsError) as e:  # CRC, deflate, duplicates
        shutil.rmtree(dest, ignore_errors=True)
        raise InputError(
            f"cannot unpack {name}: {e}", path=where, hint="The archive is damaged; fetch it again."
        ) from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return written
