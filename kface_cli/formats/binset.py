"""insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin...), read safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG/PNG bytes),
pair k is images ``(2k, 2k+1)``, and ``issame_list`` holds N booleans. Unpickling an arbitrary file
can run code, so :func:`safe_load_bin_pickle` uses a restricted unpickler: only lists, tuples,
bytes and booleans are built. Any reference to a class or function is refused, except the one a
Python 3 pickle (protocol 2) uses to rebuild ``bytes``: ``_codecs.encode(str, "latin1")``, which is
replaced by a checked equivalent. Python 2 era files are read with ``encoding="bytes"``.

The images are already aligned 112x112 crops; other sizes are resized.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError
from kface_cli.face.align import resize_crop

#: Most images a ``.bin`` may hold (insightface's largest, cfp_ff.bin, has 14,000; LFW 12,000):
#: decoded at 112x112 they take 37.6 KB each, so this bounds the decoded array to 3.8 GB.
MAX_BIN_IMAGES = 100_000
#: A file may list an image again through a pickle reference (a writer that kept one object for
#: a photo used in two pairs), but not list images many times more often than it stores them.
REPEAT_FACTOR = 2
REPEAT_FREE = 1_000


class UnsafePickleError(InputError):
    """The pickle references something other than lists, tuples, bytes and booleans."""


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` as used by protocol-2 pickles of ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            "pickle calls _codecs.encode with unexpected arguments", hint="Only insightface .bin files are accepted."
        )
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from the pickle: a .bin file holds only lists, bytes and booleans",
            hint="The file is not an insightface verification .bin (or it was tampered with); do not trust it.",
        )


def safe_load_bin_pickle(data: bytes, source: str | Path = "<bytes>") -> tuple[list[bytes], list[bool]]:
    """Unpickle ``(bins, issame_list)`` allowing only lists, tuples, bytes and booleans; validate the shape."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(e.message, hint=e.hint, path=source) from None
    except Exception as e:  # corrupt / truncated pickles raise many different types
        raise InputError(
            f"cannot read {source} as a verification .bin: {type(e).__name__}: {e}",
            hint="Expected an insightface .bin (pickle of (images, issame_list)).",
        ) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise InputError(
            f"{source} is not a (images, issame_list) pair", hint="Expected an insightface verification .bin."
        )
    bins, issame = obj
    if not isinstance(bins, list) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise InputError(f"{source}: the first element must be a list of encoded images (bytes)")
    if not isinstance(issame, list) or not all(isinstance(s, bool) for s in issame):
        raise InputError(f"{source}: the second element must be a list of booleans")
    if len(bins) != 2 * len(issame):
        raise InputError(f"{source}: {len(bins)} images for {len(issame)} pairs; expected exactly 2 images per pair")
    _check_image_count(bins, len(data), source)
    return [bytes(b) for b in bins], list(issame)


def _check_image_count(bins: list, file_bytes: int, source: str | Path) -> None:
    """Bound what decoding will allocate, before it does: pickle memo references let a small file
    list one image millions of times (15 MB asking for 210 GiB of pixels)."""
    if len(bins) > MAX_BIN_IMAGES:
        raise InputError(
            f"{source} lists {len(bins):,} images; kface reads verification .bin files of at most {MAX_BIN_IMAGES:,}",
            hint="insightface's .bin files hold up to 14,000; this one is not a verification set.",
        )
    distinct = len({id(b) for b in bins})
    if len(bins) > max(REPEAT_FACTOR * distinct, REPEAT_FREE):
        raise InputError(
            f"{source} lists {len(bins):,} images but stores only {distinct:,} distinct ones "
            f"in {file_bytes:,} bytes (the same image repeated through pickle references)",
            hint="A verification .bin stores every image of every pair; this file was crafted or damaged. Do not trust it.",
        )


def read_bin(path: str | Path, *, size: int = FACE_SIZE):
    """Read a ``.bin`` as :class:`~kface_cli.formats.pairs.PairFaces` (pairs = images 2k, 2k+1)."""
    from kface_cli.console import progress
    from kface_cli.face.imageio import decode_image
    from kface_cli.formats.pairs import PairFaces

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"verification .bin not found: {path}", hint="Pass --bin lfw.bin (insightface's faces_emore/*.bin)."
        )
    bins, issame = safe_load_bin_pickle(path.read_bytes(), path)
    if not issame:
        raise InputError(f"{path} holds no pairs")
    faces = np.empty((len(bins), size, size, 3), dtype=np.uint8)
    with progress(f"Decoding {path.name}", total=len(bins)) as bar:
        for i, data in enumerate(bins):
            img = decode_image(data, f"{path} image {i}")
            faces[i] = resize_crop(img, size)
            bar.advance()
    n = len(issame)
    return PairFaces(
        faces=faces,
        idx1=np.arange(0, 2 * n, 2, dtype=np.int64),
        idx2=np.arange(1, 2 * n, 2, dtype=np.int64),
        issame=np.asarray(issame, dtype=bool),
        names=[f"{path.name}#{i}" for i in range(len(bins))],
    )


def write_bin(path: str | Path, images: list[bytes], issame: list[bool]) -> None:
    """Write a ``.bin`` in insightface's format (for tests and for packing our own pairs)."""
    from kface_cli.atomic import write_bytes

    if len(images) != 2 * len(issame):
        raise InputError(f"{len(images)} images for {len(issame)} pairs; need exactly 2 per pair")
    write_bytes(
        path, pickle.dumps(([bytes(b) for b in images], [bool(s) for s in issame]), protocol=pickle.HIGHEST_PROTOCOL)
    )
