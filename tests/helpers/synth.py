"""Small synthetic K-Face trees for the data-stage tests, generated once per test process."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

#: A few conditions beyond the tutorial's: a dark light, a profile, an accessory without annotation.
SMALL_COMBOS = (
    ("S001", "L1", "E01", "C6"),
    ("S001", "L1", "E01", "C7"),
    ("S001", "L3", "E02", "C8"),
    ("S001", "L1", "E03", "C9"),
    ("S001", "L7", "E01", "C7"),
    ("S001", "L1", "E01", "C1"),
    ("S002", "L1", "E01", "C7"),
)


@functools.cache
def _cached_source(n_ids: int, res: str) -> Path:
    from kface_cli.atomic import write_bytes
    from kface_cli.synth.identity import identity_ids, make_identity
    from kface_cli.synth.sample_data import identity_zip_bytes

    root = Path(tempfile.mkdtemp(prefix="kface-synth-"))
    for ident in identity_ids(n_ids, seed=3):
        data, _ = identity_zip_bytes(make_identity(ident, 3), res, SMALL_COMBOS, seed=3)
        write_bytes(root / f"{res}_Resolution" / f"{ident}.zip", data)
    return root


def make_source(dest: Path, n_ids: int = 3, res: str = "Low") -> Path:
    """A K-Face root under ``dest`` with ``n_ids`` identity zips of :data:`SMALL_COMBOS`."""
    src = _cached_source(n_ids, res)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest
