"""insightface's MXNet RecordIO datasets (``train.rec`` + ``train.idx`` + ``property``), without MXNet.

Format (see insightface-compat.md):

* ``.idx``: text lines ``key<TAB>byte_offset``.
* each record: uint32 magic ``0xced7230a``, uint32 ``lrec`` (upper 3 bits: continuation flag,
  lower 29 bits: length), ``length`` bytes, zero-padded to a multiple of 4. Flag 0 = whole
  record; 1/2/3 = first/middle/last part of a record the writer split where the magic number
  appeared in the data (at 4-byte aligned offsets): the reader joins the parts and puts the 4
  magic bytes back between them.
* payload: a 24-byte little-endian header ``<IfQQ`` (flag, label, id, id2); if flag > 0, ``flag``
  float32 labels follow (the scalar label is unused); the rest is the encoded image (JPEG from
  BGR via OpenCV).
* insightface datasets: record 0 has flag 2 and labels [A, B]: images are keys 1..A-1 and keys
  A..B-1 hold each identity's [start, end) image-key range. If record 0's flag is 0, every key
  is an image. ``property`` holds ``num_classes,112,112``.

:class:`RecordIOWriter` writes the same format (used by tests and for exporting a folder tree).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.atomic import atomic_path
from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER_FORMAT = "<IfQQ"  # flag, label, id, id2
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 24
_LENGTH_MASK = (1 << 29) - 1
#: Bounds on what a hostile ``.rec``/``property`` may announce (insightface's largest set, WebFace42M,
#: has 2.06 million identities).
MAX_CLASSES = 10_000_000
MAX_SIDE = 4096
MAX_PROPERTY_BYTES = 4096
# continuation flags of a record part
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3


@dataclass(frozen=True)
class RecordHeader:
    flag: int = 0
    label: float | tuple[float, ...] = 0.0  # a tuple when flag > 0
    id: int = 0
    id2: int = 0

    @property
    def labels(self) -> tuple[float, ...]:
        return self.label if isinstance(self.label, tuple) else (float(self.label),)


def pack(header: RecordHeader, data: bytes) -> bytes:
    """Header + data as one record payload (``label`` tuple -> flag = its length)."""
    if isinstance(header.label, tuple):
        values = np.asarray(header.label, dtype="<f4")
        return struct.pack(HEADER_FORMAT, len(values), 0.0, header.id, header.id2) + values.tobytes() + data
    return struct.pack(HEADER_FORMAT, 0, float(header.label), header.id, header.id2) + data


def _parse_header(payload: bytes) -> tuple[RecordHeader, int]:
    """The header at the start of a record payload, and where the data after it begins."""
    if len(payload) < HEADER_SIZE:
        raise InputError(f"RecordIO payload of {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte header")
    flag, label, id_, id2 = struct.unpack_from(HEADER_FORMAT, payload)
    if flag > 0:
        end = HEADER_SIZE + 4 * flag
        if len(payload) < end:
            raise InputError(f"RecordIO header announces {flag} labels but the payload is too short")
        labels = tuple(float(v) for v in np.frombuffer(payload[HEADER_SIZE:end], dtype="<f4"))
        return RecordHeader(flag, labels, id_, id2), end
    return RecordHeader(0, float(label), id_, id2), HEADER_SIZE


def unpack(payload: bytes) -> tuple[RecordHeader, bytes]:
    """Record payload -> (header, the rest: usually encoded image bytes)."""
    header, start = _parse_header(payload)
    return header, payload[start:]


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``.idx`` -> {key: byte offset}."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise InputError(f"RecordIO index not found: {idx_path}", hint="A .rec needs its .idx beside it (same name).")
    index: dict[int, int] = {}
    with open(idx_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                parts = line.split()
            try:
                index[int(parts[0])] = int(parts[1])
            except (ValueError, IndexError):
                raise InputError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line[:60]!r}") from None
    return index


class RecordIOReader:
    """Random access to records by key. Safe with DataLoader workers: the file is (re)opened in
    each process on first use."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise InputError(f"RecordIO file not found: {self.rec_path}")
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.index = read_index(self.idx_path)
        self.keys = sorted(self.index)
        self._file = None
        self._pid = -1
        self._raw = None  # unbuffered handle for header reads
        self._raw_pid = -1

    def __len__(self) -> int:
        return len(self.keys)

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):  # DataLoader pickles datasets for spawn-started workers
        state = dict(self.__dict__)
        state["_file"], state["_pid"], state["_raw"], state["_raw_pid"] = None, -1, None, -1
        return state

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (parts rejoined)."""
        if key not in self.index:
            raise InputError(f"key {key} is not in {self.idx_path}")
        f = self._handle()
        f.seek(self.index[key])
        return self._read_at(f)

    def _part_header(self, f) -> tuple[int, int]:
        """(continuation flag, length) of the record part at ``f``'s position."""
        head = f.read(8)
        if len(head) < 8:
            raise InputError(
                f"{self.rec_path} ends in the middle of a record", hint="The file is truncated; re-copy it."
            )
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise InputError(
                f"{self.rec_path}: bad magic 0x{magic:08x} at byte {f.tell() - 8}",
                hint="The .idx does not match this .rec, or the file is corrupt.",
            )
        return lrec >> 29, lrec & _LENGTH_MASK

    def _read_at(self, f) -> bytes:
        chunks: list[bytes] = []
        while True:
            cflag, length = self._part_header(f)
            data = f.read(length)
            if len(data) < length:
                raise InputError(f"{self.rec_path} is truncated inside a record")
            f.seek((4 - length % 4) % 4, os.SEEK_CUR)
            if cflag == WHOLE:
                if chunks:
                    raise InputError(f"{self.rec_path}: whole record inside a split record at byte {f.tell()}")
                return data
            if cflag == FIRST:
                chunks = [data]
            elif cflag in (MIDDLE, LAST):
                if not chunks:
                    raise InputError(f"{self.rec_path}: continuation part without a first part")
                chunks += [MAGIC_BYTES, data]
                if cflag == LAST:
                    return b"".join(chunks)
            else:
                raise InputError(f"{self.rec_path}: unknown continuation flag {cflag}")

    def read_header(self, key: int) -> RecordHeader:
        """The header of record ``key`` alone: a few dozen bytes, the image is not read."""
        if key not in self.index:
            raise InputError(f"key {key} is not in {self.idx_path}")
        if self._raw is None or self._raw_pid != os.getpid():
            self._raw = open(self.rec_path, "rb", buffering=0)  # unbuffered: no 8 KB read-ahead per seek
            self._raw_pid = os.getpid()
        f = self._raw
        f.seek(self.index[key])
        cflag, length = self._part_header(f)
        if cflag != WHOLE:  # split where the magic number appeared: rare, join the parts
            return unpack(self.read(key))[0]
        head = f.read(min(length, HEADER_SIZE))
        flag = struct.unpack_from("<I", head)[0] if len(head) >= 4 else 0
        if flag > 0:
            head += f.read(min(length - len(head), 4 * flag))
        return _parse_header(head)[0]

    def labels(self, keys) -> np.ndarray:
        """``labels[0]`` of each record in ``keys`` (int64), read from the headers only; each one a
        whole number from 0 to :data:`MAX_CLASSES` - 1 (NaN, 1e12 or -1 is one line naming the record)."""
        out = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            out[i] = _whole(
                self.read_header(int(k)).labels[0], self.rec_path, f"the label of record {int(k)}", 0, MAX_CLASSES - 1
            )
        return out

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for key in self.keys:
            yield key, self.read(key)

    def close(self) -> None:
        for handle in (self._file, self._raw):
            if handle is not None:
                handle.close()
        self._file = self._raw = None


class RecordIOWriter:
    """Write ``.rec`` + ``.idx`` (atomically, on :meth:`close` / leaving the ``with`` block)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._rec_ctx = atomic_path(self.rec_path)
        self._tmp = self._rec_ctx.__enter__()
        self._f = open(self._tmp, "wb")
        self._index: list[tuple[int, int]] = []

    def write(self, key: int, payload: bytes) -> None:
        self._index.append((int(key), self._f.tell()))
        # split where the magic number appears at a 4-byte aligned offset (as dmlc-core does)
        parts: list[bytes] = []
        start = 0
        for i in range(0, len(payload) - 3, 4):
            if payload[i : i + 4] == MAGIC_BYTES:
                parts.append(payload[start:i])
                start = i + 4
        parts.append(payload[start:])
        for n, part in enumerate(parts):
            if len(parts) == 1:
                cflag = WHOLE
            else:
                cflag = FIRST if n == 0 else (LAST if n == len(parts) - 1 else MIDDLE)
            assert len(part) <= _LENGTH_MASK, "record part too large for RecordIO"
            self._f.write(struct.pack("<II", MAGIC, (cflag << 29) | len(part)))
            self._f.write(part)
            self._f.write(b"\0" * ((4 - len(part) % 4) % 4))

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        self._rec_ctx.__exit__(None, None, None)
        with atomic_path(self.idx_path) as tmp:
            tmp.write_text("".join(f"{k}\t{off}\n" for k, off in self._index), encoding="utf-8")

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()
            self._rec_ctx.__exit__(exc_type, exc, tb)


@dataclass(frozen=True)
class RecDatasetIndex:
    """Where the images of an insightface ``train.rec`` are: image keys and their labels."""

    image_keys: tuple[int, ...]
    num_classes: int
    identity_ranges: tuple[tuple[int, int], ...] = field(default=())


def read_property(folder: str | Path) -> tuple[int, int, int] | None:
    """``property`` -> (num_classes, height, width), or None when there is no such file."""
    p = Path(folder) / "property"
    if not p.is_file():
        return None
    try:
        text = p.read_bytes()[:MAX_PROPERTY_BYTES].decode("utf-8")
        values = [int(v) for v in text.strip().split(",")]
        num_classes, height, width = values[0], values[1], values[2]
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InputError(f"{p}: expected 'num_classes,{FACE_SIZE},{FACE_SIZE}'", path=p) from None
    if not (1 <= num_classes <= MAX_CLASSES and 1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise InputError(
            f"{p}: {num_classes} classes of {height}x{width} images is out of range",
            hint=f"Expected 'num_classes,{FACE_SIZE},{FACE_SIZE}' with 1 to {MAX_CLASSES:,} classes.",
            path=p,
        )
    return num_classes, height, width


def dataset_index(reader: RecordIOReader, folder: str | Path | None = None) -> RecDatasetIndex:
    """Image keys of an insightface dataset (record 0's [A, B] when present) and its class count
    (from ``property``, else the identity ranges, else the largest label + 1)."""
    if not reader.keys:
        raise InputError(f"{reader.rec_path} holds no records")
    first = reader.keys[0]
    header0 = reader.read_header(first)
    n_records = len(reader.keys)
    ranges: tuple[tuple[int, int], ...] = ()
    if first == 0 and header0.flag > 0:
        # every number is checked against the records that exist before a range is built
        a, b = (_whole(v, reader.rec_path, "record 0", 1, n_records + 1) for v in (header0.labels + (1.0, 1.0))[:2])
        if b < a:
            raise InputError(f"{reader.rec_path}: record 0 announces identity keys {a}..{b - 1}, an empty range")
        missing = next((k for k in (*range(1, a), *range(a, b)) if k not in reader.index), None)
        if missing is not None:
            raise InputError(
                f"{reader.rec_path}: record 0 announces keys up to {b - 1} but key {missing} is not in {reader.idx_path}",
                hint="The .rec/.idx pair is damaged or does not match.",
            )
        keys = tuple(range(1, a))
        ranges = tuple(_identity_range(reader, k, a) for k in range(a, b))
    else:
        keys = tuple(reader.keys)
    prop = read_property(folder if folder is not None else reader.rec_path.parent)
    if prop is not None:
        num_classes = prop[0]
        if num_classes > max(len(keys), 1):
            raise InputError(
                f"{reader.rec_path.parent / 'property'} says {num_classes:,} classes but the .rec holds {len(keys):,} images",
                hint="Every class needs at least one image; fix the `property` file.",
            )
    elif ranges:
        num_classes = len(ranges)
    else:
        num_classes = 1 + int(reader.labels(keys).max())
    return RecDatasetIndex(keys, num_classes, ranges)


def _whole(value: float, source: Path, what: str, lo: int, hi: int) -> int:
    """``value`` (a float32 label) as a whole number in [lo, hi], or one line naming the file."""
    if not (math.isfinite(value) and value == int(value) and lo <= value <= hi):
        raise InputError(
            f"{source}: {what} holds {value!r}, expected a whole number from {lo} to {hi}",
            hint="The .rec file is damaged or was not written by insightface's tools.",
        )
    return int(value)


def _identity_range(reader: RecordIOReader, key: int, a: int) -> tuple[int, int]:
    """Identity record ``key``'s [start, end) image-key range, checked to lie within keys 1..a-1."""
    labels = reader.read_header(key).labels + (0.0, 0.0)
    start = _whole(labels[0], reader.rec_path, f"identity record {key}", 1, a)
    end = _whole(labels[1], reader.rec_path, f"identity record {key}", start, a)
    return start, end
