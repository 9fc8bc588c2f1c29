"""insightface .bin reading: round trip, Python-2 pickles, and refusing malicious pickles."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from kface_cli.errors import InputError
from kface_cli.formats.binset import UnsafePickleError, read_bin, safe_load_bin_pickle, write_bin


def _png(value: int, size: int = 112) -> bytes:
    img = np.full((size, size, 3), value, np.uint8)
    img[: size // 2, :, 0] = 255 - value
    return cv2.imencode(".png", img)[1].tobytes()


def test_round_trip_pairs_and_resize(tmp_path):
    images = [_png(10), _png(20), _png(30), _png(40, size=100)]  # last one is resized to 112
    path = tmp_path / "tiny.bin"
    write_bin(path, images, [True, False])
    pf = read_bin(path)
    assert pf.faces.shape == (4, 112, 112, 3)
    assert pf.issame.tolist() == [True, False]
    assert pf.idx1.tolist() == [0, 2] and pf.idx2.tolist() == [1, 3]
    assert int(pf.faces[1, 100, 5, 1]) == 20 and int(pf.faces[3, 100, 5, 1]) == 40


def _py2_style_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's cPickle (protocol 2) writes for (list of str, list of bool)."""
    out = bytearray(b"\x80\x02](")
    for im in images:
        out += (b"U" + bytes([len(im)]) + im) if len(im) < 256 else (b"T" + len(im).to_bytes(4, "little") + im)
    out += b"e]("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    out += b"e\x86."
    return bytes(out)


def test_python2_pickle_is_read_as_bytes(tmp_path):
    images = [_png(50), _png(60)]
    data = _py2_style_pickle(images, [True])
    bins, issame = safe_load_bin_pickle(data)
    assert bins == images and issame == [True]
    (tmp_path / "py2.bin").write_bytes(data)
    assert read_bin(tmp_path / "py2.bin").faces.shape == (2, 112, 112, 3)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_of_bytes_loads(protocol):
    data = pickle.dumps(([b"\x00\xffab", b"c"], [False]), protocol=protocol)
    assert safe_load_bin_pickle(data) == ([b"\x00\xffab", b"c"], [False])


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("true",))  # harmless; refused before it could run


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Writer:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for payload in (([b"a", b"b"], [True], _Exploit()), ([Writer(), b"b"], [True])):
        data = pickle.dumps(payload, protocol=2)
        with pytest.raises(UnsafePickleError, match="refusing to load"):
            safe_load_bin_pickle(data, "evil.bin")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,match",
    [
        (([b"a", b"b", b"c"], [True]), "2 images per pair"),
        (([b"a", b"b"], [1]), "list of booleans"),
        ((["a", b"b"], [True]), "list of encoded images"),
        (([b"a", b"b"],), "not a \\(images, issame_list\\)"),
    ],
)
def test_wrong_structure_is_refused(payload, match):
    with pytest.raises(InputError, match=match):
        safe_load_bin_pickle(pickle.dumps(payload, protocol=4))


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        safe_load_bin_pickle(b"\x80\x04garbage")
    with pytest.raises(InputError, match="not found"):
        read_bin(tmp_path / "none.bin")
    bad = tmp_path / "bad.bin"
    write_bin(bad, [b"not an image", _png(1)], [True])
    with pytest.raises(InputError, match="cannot read image"):
        read_bin(bad)
