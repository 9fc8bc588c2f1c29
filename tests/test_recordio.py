"""Our RecordIO reader/writer: the documented format, split records, insightface's record 0."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kface_cli.errors import InputError
from kface_cli.formats.recordio import (
    HEADER_SIZE,
    MAGIC,
    MAGIC_BYTES,
    RecordHeader,
    RecordIOReader,
    RecordIOWriter,
    dataset_index,
    pack,
    unpack,
)


def _raw_record(payload: bytes, cflag: int = 0) -> bytes:
    """One record part written by hand from the spec (independent of our writer)."""
    pad = b"\0" * ((4 - len(payload) % 4) % 4)
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + pad


def test_reads_hand_written_file_with_split_record(tmp_path):
    whole = struct.pack("<IfQQ", 0, 7.0, 1, 0) + b"abcde"
    # a payload holding the magic number: the writer split it into parts 1, 2, 3 (magic removed)
    p1, p2, p3 = struct.pack("<IfQQ", 0, 3.0, 2, 0) + b"xxxx", b"yyyy", b"zz"
    rec = _raw_record(whole)
    off2 = len(rec)
    rec += _raw_record(p1, 1) + _raw_record(p2, 2) + _raw_record(p3, 3)
    (tmp_path / "t.rec").write_bytes(rec)
    (tmp_path / "t.idx").write_text(f"1\t0\n2\t{off2}\n")
    r = RecordIOReader(tmp_path / "t.rec")
    assert r.read(1) == whole
    joined = r.read(2)
    assert joined == p1 + MAGIC_BYTES + p2 + MAGIC_BYTES + p3
    header, data = unpack(joined)
    assert header.label == 3.0 and header.id == 2
    assert data == b"xxxx" + MAGIC_BYTES + b"yyyy" + MAGIC_BYTES + b"zz"


def test_writer_splits_on_magic_and_round_trips(tmp_path):
    payloads = {
        0: pack(RecordHeader(0, 1.5, 0, 0), b"plain"),
        5: pack(
            RecordHeader(0, 2.0, 5, 0), b"ab" + b"cd" + MAGIC_BYTES + b"tail" + MAGIC_BYTES
        ),  # aligned magic, twice
        9: pack(RecordHeader(0, 3.0, 9, 0), b"a" + MAGIC_BYTES + b"unaligned"),
    }
    with RecordIOWriter(tmp_path / "d.rec") as w:
        for k, p in payloads.items():
            w.write(k, p)
    raw = (tmp_path / "d.rec").read_bytes()
    flags = []
    pos = 0
    while pos < len(raw):
        magic, lrec = struct.unpack_from("<II", raw, pos)
        assert magic == MAGIC
        flags.append(lrec >> 29)
        n = lrec & ((1 << 29) - 1)
        pos += 8 + n + (4 - n % 4) % 4
    assert flags == [0, 1, 2, 3, 0], "record 5 must be written in three parts"
    r = RecordIOReader(tmp_path / "d.rec")
    assert r.keys == [0, 5, 9]
    for k, p in payloads.items():
        assert r.read(k) == p


def test_multi_label_header_and_insightface_record_zero(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(4)]
    labels = [0, 0, 1, 1]
    with RecordIOWriter(tmp_path / "train.rec") as w:
        w.write(0, pack(RecordHeader(2, (5.0, 7.0)), b""))  # images 1..4, identity ranges at 5..6
        for i, (img, y) in enumerate(zip(imgs, labels), start=1):
            jpg = cv2.imencode(".jpg", img)[1].tobytes()
            jpg += (
                b"\0" * ((4 - (HEADER_SIZE + len(jpg)) % 4) % 4) + MAGIC_BYTES + b"trailer"
            )  # magic inside the image bytes
            w.write(i, pack(RecordHeader(0, float(y), i, 0), jpg))
        w.write(5, pack(RecordHeader(2, (1.0, 3.0)), b""))
        w.write(6, pack(RecordHeader(2, (3.0, 5.0)), b""))
    (tmp_path / "property").write_text("2,112,112\n")
    r = RecordIOReader(tmp_path / "train.rec")
    h0, _ = unpack(r.read(0))
    assert h0.flag == 2 and h0.labels == (5.0, 7.0)
    index = dataset_index(r, tmp_path)
    assert index.image_keys == (1, 2, 3, 4)
    assert index.identity_ranges == ((1, 3), (3, 5))
    assert index.num_classes == 2
    h, data = unpack(r.read(3))
    assert h.label == 1.0 and MAGIC_BYTES in data
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, cv2.imdecode(cv2.imencode(".jpg", imgs[2])[1], cv2.IMREAD_COLOR))


def test_corrupt_files_are_user_errors(tmp_path):
    (tmp_path / "x.rec").write_bytes(b"\x00" * 16)
    (tmp_path / "x.idx").write_text("0\t0\n")
    with pytest.raises(InputError, match="bad magic"):
        RecordIOReader(tmp_path / "x.rec").read(0)
    (tmp_path / "y.rec").write_bytes(_raw_record(b"abc")[:-3])
    (tmp_path / "y.idx").write_text("0\t0\n")
    with pytest.raises(InputError, match="truncated"):
        RecordIOReader(tmp_path / "y.rec").read(0)
    (tmp_path / "z.rec").write_bytes(b"")
    with pytest.raises(InputError, match="index not found"):
        RecordIOReader(tmp_path / "z.rec")


def test_labels_come_from_headers_without_reading_images(tmp_path, monkeypatch):
    rec = tmp_path / "train.rec"
    with RecordIOWriter(rec) as w:
        w.write(0, pack(RecordHeader(0, 3.0, 0, 0), b"\xff" * 5000))  # a large "image"
        w.write(1, pack(RecordHeader(0, 1.0, MAGIC, 0), b"jpeg"))  # id == magic: a split record
        w.write(2, pack(RecordHeader(0, (2.0, 7.0), 0, 0), b"jpeg"))  # multi-label header
    reader = RecordIOReader(rec)
    assert reader.read_header(1) == RecordHeader(0, 1.0, MAGIC, 0)  # the split one is joined
    assert reader.read_header(2).labels == (2.0, 7.0)
    calls = []
    real_read = RecordIOReader.read
    monkeypatch.setattr(RecordIOReader, "read", lambda self, key: calls.append(key) or real_read(self, key))
    assert reader.labels([0, 1, 2]).tolist() == [3, 1, 2]
    assert calls == [1]  # only the split record needed a full read
    assert dataset_index(reader, tmp_path).num_classes == 4  # no property file: largest label + 1
