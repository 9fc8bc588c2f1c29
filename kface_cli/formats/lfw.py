"""LFW-style ``pairs.txt`` (the View 2 protocol file) as a list of :class:`~kface_cli.formats.pairs.Pair`.

Format: a header line ``<folds> <pairs per class per fold>`` (``10 300`` for LFW), then, for each
fold, that many same-person lines ``name n1 n2`` followed by that many different-person lines
``name1 n1 name2 n2``; fields separated by tabs or spaces. Image ``n`` of ``name`` is
``<root>/<name>/<name>_<n:04d>.jpg``. A file without the header (just pair lines) is accepted too.

Pairs are returned in file order, so the 10-fold split of
:func:`kface_cli.embedding.metrics.ten_fold_accuracy` reproduces the official folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kface_cli.errors import InputError
from kface_cli.formats.pairs import Pair

#: How LFW names its images: ``<root>/<name>/<name>_<n:04d><ext>``.
LFW_IMAGE_PATTERN = "{name}/{name}_{num:04d}{ext}"


@dataclass(frozen=True)
class LfwPairs:
    pairs: list[Pair]
    nfolds: int | None  # from the header; None without one
    per_fold: int | None  # pairs per class per fold, from the header


def lfw_image_path(root: str | Path, name: str, num: int, ext: str = ".jpg") -> Path:
    return Path(root) / LFW_IMAGE_PATTERN.format(name=name, num=num, ext=ext)


def _int(token: str, path: Path, lineno: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise InputError(
            f"{path}:{lineno}: expected an image number, got {token!r}", hint="Is this an LFW pairs.txt?"
        ) from None


def read_lfw_pairs(path: str | Path, root: str | Path, *, ext: str = ".jpg") -> LfwPairs:
    """Parse an LFW ``pairs.txt``; image paths are resolved under ``root``.

    Checks the header's counts when there is one (``folds * per_fold * 2`` pairs, each fold's same
    pairs before its different pairs) and raises :class:`InputError` on any malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"LFW pairs file not found: {path}", hint="Pass --lfw-pairs pairs.txt and --root <folder of LFW images>."
        )
    lines = [
        (i, ln.split()) for i, ln in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
    ]
    lines = [(i, t) for i, t in lines if t]
    if not lines:
        raise InputError(f"{path} is empty", hint="Expected an LFW pairs.txt.")
    nfolds = per_fold = None
    first_no, first = lines[0]
    if len(first) == 2 and all(t.isdigit() for t in first):
        nfolds, per_fold = int(first[0]), int(first[1])
        lines = lines[1:]
    pairs: list[Pair] = []
    for lineno, t in lines:
        if len(t) == 3:  # same person: name n1 n2
            n1, a, b = t
            n2 = n1
        elif len(t) == 4:  # different people: name1 n1 name2 n2
            n1, a, n2, b = t
        else:
            raise InputError(
                f"{path}:{lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {len(t)} fields",
                hint="Is this an LFW pairs.txt?",
            )
        pairs.append(
            Pair(
                lfw_image_path(root, n1, _int(a, path, lineno), ext),
                lfw_image_path(root, n2, _int(b, path, lineno), ext),
                len(t) == 3,
                {"id": n1},
                {"id": n2},
            )
        )
    if nfolds is not None and per_fold is not None:
        expected = nfolds * per_fold * 2
        if len(pairs) != expected:
            raise InputError(
                f"{path}: header says {nfolds} folds x {per_fold} x 2 = {expected} pairs, found {len(pairs)}",
                hint="The file is truncated or not in LFW format.",
            )
        for f in range(nfolds):
            block = pairs[f * 2 * per_fold : (f + 1) * 2 * per_fold]
            if not all(p.same for p in block[:per_fold]) or any(p.same for p in block[per_fold:]):
                raise InputError(
                    f"{path}: fold {f + 1} does not list {per_fold} same pairs followed by {per_fold} different pairs"
                )
    return LfwPairs(pairs=pairs, nfolds=nfolds, per_fold=per_fold)
