"""Verification pair lists: our ``val_pairs.csv`` (written by ``kface split``).

``val_pairs.csv`` columns: ``path1,path2,same`` (paths relative to the CSV's folder; ``same`` is
1 or 0), then the K-Face codes of both images so results can be broken down by condition:
``id1,id2,acc1,light1,expr1,cam1,acc2,light2,expr2,cam2`` (empty when unknown). Readers accept a
file with only the first three columns.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError

PAIR_COLUMNS = [
    "path1",
    "path2",
    "same",
    "id1",
    "id2",
    "acc1",
    "light1",
    "expr1",
    "cam1",
    "acc2",
    "light2",
    "expr2",
    "cam2",
]
CODE_KEYS = ("acc", "light", "expr", "cam")


@dataclass(frozen=True)
class Pair:
    path1: Path
    path2: Path
    same: bool
    #: K-Face codes per side, e.g. {"id": "19062531", "acc": "S001", "light": "L1", "expr": "E01", "cam": "C7"}
    codes1: dict = field(default_factory=dict, compare=False)
    codes2: dict = field(default_factory=dict, compare=False)


def write_pairs_csv(path: str | Path, pairs: Iterable[Pair]) -> int:
    """Write pairs atomically; paths are stored relative to the CSV's folder. Returns the count."""
    from kface_cli.atomic import atomic_open

    path = Path(path)
    base = path.parent.resolve()
    n = 0
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PAIR_COLUMNS)
        for p in pairs:
            row = [
                _rel(p.path1, base),
                _rel(p.path2, base),
                int(p.same),
                p.codes1.get("id", ""),
                p.codes2.get("id", ""),
            ]
            row += [p.codes1.get(k, "") for k in CODE_KEYS]
            row += [p.codes2.get(k, "") for k in CODE_KEYS]
            w.writerow(row)
            n += 1
    return n


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """Read a pairs CSV (ours, or any CSV with ``path1,path2,same``); paths resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file not found: {path}", hint="Run `kface split` or pass --pairs FILE.csv.")
    base = path.parent
    pairs: list[Pair] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path1", "path2", "same"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{path} is not a pairs CSV: missing column(s) {', '.join(sorted(missing))}",
                hint="Expected a header path1,path2,same[,...].",
            )
        for lineno, row in enumerate(reader, start=2):
            same = str(row["same"]).strip().lower()
            if same not in ("0", "1", "true", "false"):
                raise InputError(f"{path}:{lineno}: 'same' must be 0 or 1, got {row['same']!r}")
            codes1 = {k: row.get(f"{k}1") or "" for k in ("id",) + CODE_KEYS}
            codes2 = {k: row.get(f"{k}2") or "" for k in ("id",) + CODE_KEYS}
            pairs.append(
                Pair(
                    path1=_abs(row["path1"], base),
                    path2=_abs(row["path2"], base),
                    same=same in ("1", "true"),
                    codes1={k: v for k, v in codes1.items() if v},
                    codes2={k: v for k, v in codes2.items() if v},
                )
            )
    return pairs


def _rel(p: Path, base: Path) -> str:
    p = Path(p).resolve()
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _abs(s: str, base: Path) -> Path:
    p = Path(s)
    return p if p.is_absolute() else base / p


@dataclass
class PairFaces:
    """Pairs over a set of unique aligned faces.

    ``faces[i]`` is the aligned crop of image ``names[i]``; pair k compares ``faces[idx1[k]]`` with
    ``faces[idx2[k]]``. ``failed[i]`` marks images where no face was found (their crop is blank).
    """

    faces: np.ndarray  # (U, 112, 112, 3) BGR uint8
    idx1: np.ndarray  # (N,) int64
    idx2: np.ndarray  # (N,) int64
    issame: np.ndarray  # (N,) bool
    names: list[str] = field(default_factory=list)  # (U,) image path or name
    failed: np.ndarray | None = None  # (U,) bool

    def __post_init__(self) -> None:
        assert self.faces.ndim == 4 and self.faces.shape[1:] == (FACE_SIZE, FACE_SIZE, 3), (
            f"faces must be (U,{FACE_SIZE},{FACE_SIZE},3), got {self.faces.shape}"
        )
        assert self.idx1.shape == self.idx2.shape == self.issame.shape, (
            "idx1, idx2, issame must have one entry per pair"
        )
        if self.failed is None:
            self.failed = np.zeros(len(self.faces), dtype=bool)

    @property
    def n_pairs(self) -> int:
        return int(self.issame.size)
