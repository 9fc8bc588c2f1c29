"""Reading a K-Face download: per-identity zips, or the same tree already unpacked.

Accepted layouts (the root folder's name does not matter)::

    ROOT/Middle_Resolution/19062531.zip          as distributed (zip members S001/L1/E01/C7.jpg)
    ROOT/Middle_Resolution/19062531/S001/...     unpacked
    ROOT/face_recognition/Middle_Resolution/...  one extra level is found too
    ROOT = .../Middle_Resolution                 the resolution folder itself

:func:`open_identity` returns a reader that opens a zip ONCE and reads members one by one (the
original tutorial opened the zip again for every image, which re-reads its central directory of
~11,000 entries each time). Members are looked up by their K-Face codes, never by trusting their
names: a member called ``../../etc/x`` or ``/S001/L1/E01/C7.jpg`` can never make a writer escape
its output folder (see :func:`kface_cli.archive.is_safe_member_name`).

Every source is untrusted:

* members are streamed to disk (:meth:`IdentityReader.copy_to`), never held whole in memory, and a
  member larger than :data:`MAX_MEMBER_BYTES` or compressed more than :data:`~kface_cli.archive.MAX_COMPRESSION_RATIO`
  to one (a "zip bomb") is skipped and listed in :attr:`IdentityReader.oversized`;
* in an unpacked tree, a file or folder that is a symbolic link leading out of the identity's folder
  (``C7.txt -> /etc/passwd``) is never followed: it is listed in :attr:`IdentityReader.unsafe`.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from kface_cli.archive import COPY_CHUNK_BYTES, inside, is_safe_member_name, too_big, unreadable_member
from kface_cli.dataset.codes import (
    ACCESSORIES,
    CAMERAS,
    EXPRESSIONS,
    ID_PATTERN,
    LIGHTS,
    is_identity_id,
    parse_member_path,
)
from kface_cli.errors import InputError
from kface_cli.workspace import normalise_resolution

SourceKind = Literal["zip", "dir"]
#: Largest member read from a source. K-Face's largest real images are 864x576 JPEGs of a few
#: hundred KB; 16 MiB is far above any real member and far below a decompression bomb.
MAX_MEMBER_BYTES = 16 * 1024 * 1024
#: A member named exactly as K-Face names them, optionally under one plain folder (e.g. the ID).
_CANONICAL = re.compile(r"^(?:[A-Za-z0-9_\-]+/)?(S\d{3})/(L\d{1,2})/(E\d{2})/(C\d{1,2})\.(jpg|txt)$")
#: (acc, light, expr, cam, ext) -> where it is inside the identity's zip or folder
MemberKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class IdentitySource:
    id: str
    res: str
    path: Path
    kind: SourceKind


def resolution_dir(root: str | Path, res: str) -> Path:
    """The ``<Res>_Resolution`` folder of a K-Face root (see the module doc for accepted layouts)."""
    root = Path(root).expanduser()
    res = normalise_resolution(res)
    if not root.exists():
        raise InputError(
            f"K-Face folder not found: {root}",
            hint="Pass the folder that holds High_Resolution/, Middle_Resolution/, Low_Resolution/.",
        )
    if not root.is_dir():
        raise InputError(
            f"expected a folder, got a file: {root}",
            hint="Pass the folder that holds the <Res>_Resolution folders, not a single zip.",
        )
    want = f"{res}_resolution".lower()
    if root.name.lower() == want:
        return root
    for parent in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for child in parent.iterdir() if parent.is_dir() else ():
            if child.is_dir() and child.name.lower() == want:
                return child
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower().endswith("_resolution"))
    hint = (
        f"It holds {', '.join(present)}; choose one with --res."
        if present
        else ("Expected High_Resolution/, Middle_Resolution/ or Low_Resolution/ inside it (zips or unpacked folders).")
    )
    raise InputError(f"no {res}_Resolution folder in {root}", hint=hint)


def list_identities(root: str | Path, res: str) -> list[IdentitySource]:
    """All identities of a resolution, sorted by ID: ``<ID>.zip`` files and ``<ID>/`` folders.

    When both exist for one ID, the unpacked folder wins (no decompression needed).
    """
    res = normalise_resolution(res)
    folder = resolution_dir(root, res)
    found: dict[str, IdentitySource] = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == ".zip" and is_identity_id(p.stem):
            found.setdefault(p.stem, IdentitySource(p.stem, res, p, "zip"))
        elif p.is_dir() and is_identity_id(p.name):
            found[p.name] = IdentitySource(p.name, res, p, "dir")
    if not found:
        raise InputError(
            f"no identities in {folder}",
            hint="Expected <8-digit ID>.zip files (e.g. 19062531.zip) or unpacked <ID>/ folders.",
        )
    return [found[k] for k in sorted(found)]


class IdentityReader:
    """One identity's images and annotations, read member by member (zip opened once).

    Use as a context manager::

        with open_identity(src) as reader:
            data = reader.read(("S001", "L1", "E01", "C7", ".jpg"))
    """

    def __init__(self, source: IdentitySource):
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._root: Path | None = None  # an unpacked identity's real folder (links must stay inside)
        self.index: dict[MemberKey, str] = {}
        #: Member names skipped because they would escape the output folder (or the source tree).
        self.unsafe: list[str] = []
        #: (member name, why) of members skipped for their size or compression ratio.
        self.oversized: list[tuple[str, str]] = []
        self.sizes: dict[MemberKey, int] = {}

    def __enter__(self) -> IdentityReader:
        src = self.source
        if src.kind == "zip":
            try:
                self._zip = zipfile.ZipFile(src.path)
                infos = self._zip.infolist()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                self.close()
                raise _read_error(e, src.path, f"corrupt or unreadable zip {src.path.name}: {e}") from None
            counts = Counter(info.filename for info in infos)
            duplicates: set[str] = set()
            for info in infos:
                if info.is_dir():
                    continue
                if counts[info.filename] > 1:  # which copy is "the" member? neither: checked and read alike
                    if info.filename not in duplicates:
                        duplicates.add(info.filename)
                        self.oversized.append((info.filename, DUPLICATE_WHY.format(n=counts[info.filename])))
                    continue
                why = unreadable_member(info) or too_big(info.file_size, info.compress_size, MAX_MEMBER_BYTES)
                if why is not None:
                    self.oversized.append((info.filename, why))
                    continue
                self._add(info.filename, info.file_size)
        else:
            self._root = src.path.resolve()
            try:
                found = sorted(src.path.rglob("*"))
            except OSError as e:
                raise _read_error(e, src.path, f"cannot list {src.path}: {e}") from None
            for p in found:
                rel = p.relative_to(src.path).as_posix()
                # rglob does not descend into linked folders, so only an entry itself can be a link
                if p.is_symlink() and not inside(p, self._root):
                    self.unsafe.append(rel)
                elif p.is_file():
                    size = p.stat().st_size
                    why = too_big(size, size, MAX_MEMBER_BYTES)
                    if why is not None:
                        self.oversized.append((rel, why))
                        continue
                    self._add(rel, size)
        return self

    def _add(self, name: str, size: int) -> None:
        # A K-Face zip lists ~11,000 members and only a few dozen are wanted: canonical names
        # (S001/L1/E01/C7.jpg) take a fast path; anything else gets the full, tolerant parse.
        m = _CANONICAL.match(name)
        if (
            m is not None
            and m.group(1) in ACCESSORIES
            and m.group(2) in LIGHTS
            and m.group(3) in EXPRESSIONS
            and m.group(4) in CAMERAS
        ):
            key = (m.group(1), m.group(2), m.group(3), m.group(4), ".txt" if m.group(5) == "txt" else ".jpg")
        else:
            if not is_safe_member_name(name):
                self.unsafe.append(name)
                return
            codes = parse_member_path(name)
            ext = PurePosixPath(name.replace("\\", "/")).suffix.lower()
            if codes is None or ext not in (".jpg", ".jpeg", ".txt"):
                return
            key = (codes["acc"], codes["light"], codes["expr"], codes["cam"], ".txt" if ext == ".txt" else ".jpg")
        if key not in self.index:
            self.index[key] = name
            self.sizes[key] = size

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def has(self, key: MemberKey) -> bool:
        return key in self.index

    def _open_member(self, key: MemberKey) -> IO[bytes]:
        name = self.index[key]
        if self._zip is not None:
            return self._zip.open(name)
        path = self.source.path / name
        if self._root is None or not inside(path, self._root):  # replaced by a link since it was listed
            raise InputError(f"{name} in {self.source.path} became a link out of the folder", path=self.source.path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        return os.fdopen(fd, "rb")

    def _chunks(self, key: MemberKey) -> Iterator[bytes]:
        """The member's bytes, a chunk at a time, never more than :data:`MAX_MEMBER_BYTES` in all.

        A damaged member raises InputError naming the zip.
        """
        name = self.index[key]
        total = 0
        try:
            with self._open_member(key) as f:
                while chunk := f.read(COPY_CHUNK_BYTES):
                    total += len(chunk)
                    if total > MAX_MEMBER_BYTES:  # a member that grew since it was listed
                        raise InputError(
                            f"{name} in {self.source.path.name} is larger than {MAX_MEMBER_BYTES // 2**20} MiB",
                            path=self.source.path,
                        )
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
            # CRC, deflate, truncation; RuntimeError: encrypted, NotImplementedError: compression method
            raise _read_error(e, self.source.path, f"cannot read {name} from {self.source.path.name}: {e}") from None

    def read(self, key: MemberKey) -> bytes:
        """The bytes of one member (at most :data:`MAX_MEMBER_BYTES`); a damaged member raises InputError."""
        return b"".join(self._chunks(key))

    def copy_to(self, key: MemberKey, target: str | Path) -> None:
        """Stream one member into ``target`` (atomically, in bounded memory)."""
        from kface_cli.atomic import atomic_open

        with atomic_open(target, "wb") as out:
            for chunk in self._chunks(key):
                out.write(chunk)

    def keys(self) -> Iterator[MemberKey]:
        return iter(self.index)


def open_identity(source: IdentitySource) -> IdentityReader:
    return IdentityReader(source)


#: Why members sharing one name are skipped: the size check would see one copy, extraction another.
DUPLICATE_WHY = "the zip lists {n} members with this name; none is used"


def _read_error(e: BaseException, path: Path, message: str) -> InputError:
    """A source that cannot be read: "permission denied" is not "damaged"."""
    if isinstance(e, PermissionError):
        return InputError(
            f"cannot read {path.name}: permission denied",
            path=path,
            hint="Make it readable for this user, or run kface as a user who may read it.",
        )
    return InputError(message, path=path, hint="The file is damaged; download this identity's zip again.")


def parse_id_list(text: str | Path | None) -> tuple[str, ...] | None:
    """``--ids``: comma/space-separated IDs, or a file with one ID per line (``#`` comments allowed)."""
    if text is None or not str(text).strip():
        return None
    given = str(text).strip()
    raw = given
    path = Path(given).expanduser()
    from_file = not ID_PATTERN.match(given) and path.is_file()
    if from_file:
        raw = "\n".join(
            line.split("#", 1)[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        )
    tokens = [t for t in re.split(r"[\s,;]+", raw) if t]
    bad = [t for t in tokens if not is_identity_id(t)]
    if bad:
        from kface_cli.errors import CodeError

        where = f" in {path}" if from_file else ""
        hint = "K-Face IDs are 8 digits, e.g. 19062531" + (
            "" if from_file or "," in given or len(tokens) > 1 else f"; and there is no file {given}"
        )
        raise CodeError(f"{bad[0]!r}{where} is not a K-Face identity ID", hint=hint + ".")
    return tuple(dict.fromkeys(tokens))


__all__ = [
    "IdentityReader",
    "IdentitySource",
    "is_safe_member_name",
    "list_identities",
    "open_identity",
    "parse_id_list",
    "resolution_dir",
]
