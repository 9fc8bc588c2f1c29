"""``kface split``: identity-disjoint train/val(/test) folders and verification pairs from the crops.

Reads the crops listed in ``faces/<Res>/manifest.csv`` (or, without a manifest, every
``faces/<Res>/<ID>/*.jpg``) and writes::

    split/train/<ID>/*.jpg     training identities (hard links to the crops; copies if linking fails)
    split/val/<ID>/*.jpg       validation identities: never seen in training
    split/classes.csv          id,label for the training identities (label = index in sorted order)
    split/val_pairs.csv        path1,path2,same + both images' K-Face codes (kface_cli.formats.pairs)
    split/test/<ID>/*.jpg      with ``test_ids``/``test_frac``: test identities, seen by no choice
    split/test_pairs.csv       (not by training's best epoch, nor by threshold calibration: those use
                               val); ``kface evaluate`` reports on them by default
    split/sources.csv          path,source: each face's source photo (paths relative to split/), so
                               `kface evaluate --landmarks detect` can align the photos again

Choosing the validation identities: ``val_ids`` (a count) or ``val_frac`` (a fraction); with
``order="random"`` (default) they are drawn with ``seed``; ``order="sorted"`` takes the LAST ones
in ID order, which reproduces the original tutorial (400 identities: the first 390 train, the
last 10 validate).

Choosing the test identities (``test_ids`` or ``test_frac``): drawn first, with their own stream
of ``seed`` (``order="sorted"``: the last ones by ID, and val the ones just before them); val is
then chosen among the rest exactly as without a test part, so adding a test part never changes how
val is drawn. The three parts are identity-disjoint.

Pairs: every same-identity pair among the val images (or ``max_pairs`` of them, drawn with
``seed``) and as many different-identity pairs, drawn with ``seed`` without repeats. Because each
row keeps both images' codes, ``kface evaluate`` can break accuracy down by light, expression and
camera. A previous split is replaced as a whole (written beside it, then swapped in).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from kface_cli.choices import SplitOrder
from kface_cli.dataset import codes as kc
from kface_cli.defaults import DEFAULT_VAL_IDS
from kface_cli.errors import InputError
from kface_cli.workspace import (
    CLASSES_CSV,
    DEFAULT_RESOLUTION,
    MANIFEST,
    TEST_PAIRS_CSV,
    VAL_PAIRS_CSV,
    Workspace,
    normalise_resolution,
)

SOURCES_CSV = "sources.csv"  # split/: each face's source photo (``kface evaluate --landmarks detect``)


@dataclass(frozen=True)
class SplitResult:
    out: Path
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    train_images: int
    val_images: int
    same_pairs: int
    diff_pairs: int
    linked: bool  # True when every file is a hard link (no extra disk space)
    classes_csv: Path
    pairs_csv: Path
    seed: int
    order: str
    seconds: float
    test_ids: tuple[str, ...] = ()
    test_images: int = 0
    test_same_pairs: int = 0
    test_diff_pairs: int = 0
    test_pairs_csv: Path | None = None


def _identity_images(faces: Path) -> tuple[dict[str, list[Path]], dict[Path, Path]]:
    """Images per identity: the manifest's successful crops when there is one (stale files from an
    earlier crop with another selection are ignored), else every image in ``<ID>/`` folders; and
    each crop's source photo, when the crop folder records its source (``kface crop`` does)."""
    manifest = faces / MANIFEST
    if manifest.is_file():
        from kface_cli.prepare.crop import read_manifest, read_settings

        rows = [r for r in read_manifest(manifest) if r.get("status") == "ok" and r.get("path")]
        root = (read_settings(faces) or {}).get("source")
        if rows:
            groups: dict[str, list[Path]] = {}
            sources: dict[Path, Path] = {}
            for r in rows:
                p = faces / r["path"]
                if p.is_file():
                    groups.setdefault(r["id"], []).append(p)
                    if root and r.get("source"):
                        sources[p] = Path(root) / r["source"]
            return {k: sorted(v) for k, v in sorted(groups.items())}, sources
    groups = {}
    for d in sorted(p for p in faces.iterdir() if p.is_dir() and kc.is_identity_id(p.name)):
        imgs = sorted(
            p
            for p in d.iterdir()
            if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith(".")
        )
        if imgs:
            groups[d.name] = imgs
    return groups, {}


def write_sources(path: Path, sources: dict[str, Path], split_dir: Path) -> None:
    """``path,source`` rows; sources are written relative to ``split_dir`` (where the CSV will live)."""
    from kface_cli.atomic import atomic_open

    base = split_dir.resolve()
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "source"])
        for rel, src in sorted(sources.items()):
            w.writerow([rel, Path(os.path.relpath(Path(src).resolve(), base)).as_posix()])


def read_sources(split_dir: str | Path) -> dict[Path, Path]:
    """Each split face's source photo (written by :func:`split`), keyed by the face's absolute path."""
    split_dir = Path(split_dir).absolute()
    path = split_dir / SOURCES_CSV
    if not path.is_file():
        raise InputError(
            f"{split_dir} does not record the faces' source photos ({SOURCES_CSV} is missing)",
            hint="Run `kface crop` and `kface split` again (this kface records them), then evaluate again.",
        )
    with open(path, newline="", encoding="utf-8") as f:
        return {
            Path(os.path.normpath(split_dir / row["path"])): Path(os.path.normpath(split_dir / row["source"]))
            for row in csv.DictReader(f)
        }


def choose_val_ids(
    ids: list[str], *, val_ids: int | None, val_frac: float | None, seed: int, order: SplitOrder | str
) -> tuple[str, ...]:
    """Pick the validation identities (see module doc). ``ids`` must be sorted."""
    order = SplitOrder.parse(order, "--order")
    if val_ids is not None and val_frac is not None:
        raise InputError("give either --val-ids or --val-frac, not both")
    n = len(ids)
    if val_frac is not None:
        if not 0 < val_frac < 1:
            raise InputError(f"--val-frac must be between 0 and 1, got {val_frac}")
        k = max(1, int(round(n * val_frac)))
    else:
        k = DEFAULT_VAL_IDS if val_ids is None else val_ids
        if val_ids is None:
            k = min(k, max(2, n // 4))  # small sets: keep three quarters for training
    if k < 2 or k > n - 1:
        raise InputError(
            f"cannot hold out {k} of {n} identities for validation",
            hint="Validation needs at least 2 identities (for different-identity pairs) and training at least 1.",
        )
    if order == "sorted":
        return tuple(ids[n - k :])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=k, replace=False)
    return tuple(sorted(ids[i] for i in chosen))


#: Fewest identities a test part may hold (different-identity pairs need two).
MIN_TEST_IDS = 2


def choose_test_ids(
    ids: list[str], *, test_ids: int | None, test_frac: float | None, seed: int, order: SplitOrder | str
) -> tuple[str, ...]:
    """Pick the test identities (none unless ``test_ids`` or ``test_frac``). ``ids`` must be sorted;
    at least 3 identities must remain for train (1) and val (2)."""
    order = SplitOrder.parse(order, "--order")
    if test_ids is None and test_frac is None:
        return ()
    if test_ids is not None and test_frac is not None:
        raise InputError("give either --test-ids or --test-frac, not both")
    n = len(ids)
    if test_frac is not None:
        if not 0 < test_frac < 1:
            raise InputError(f"--test-frac must be between 0 and 1, got {test_frac}")
        k = max(MIN_TEST_IDS, int(round(n * test_frac)))
    else:
        k = int(test_ids)  # type: ignore[arg-type]
    if k < MIN_TEST_IDS or k > n - 3:
        raise InputError(
            f"cannot hold out {k} of {n} identities for testing",
            hint="A test part needs at least 2 identities, and 3 must remain (1 to train, 2 to validate).",
        )
    if order == "sorted":
        return tuple(ids[n - k :])
    rng = np.random.default_rng([seed, 2])  # its own stream: val is drawn as without a test part
    chosen = rng.choice(n, size=k, replace=False)
    return tuple(sorted(ids[i] for i in chosen))


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (True), or copy it when linking is impossible (False)."""
    from kface_cli.atomic import ensure_dir

    ensure_dir(dst.parent)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def make_pairs(val: dict[str, list[Path]], *, seed: int, max_pairs: int | None = None) -> tuple[list, int, int]:
    """Same-identity pairs (all, or ``max_pairs`` drawn) and as many different-identity pairs."""
    from kface_cli.formats.pairs import Pair

    rng = np.random.default_rng([seed, 1])
    same = [(a, b) for imgs in val.values() for a, b in combinations(imgs, 2)]
    if max_pairs is not None and len(same) > max_pairs:
        keep = np.sort(rng.choice(len(same), size=max_pairs, replace=False))
        same = [same[i] for i in keep]
    flat = [(i, p) for i, imgs in val.items() for p in imgs]
    owners = np.array([i for i, _ in flat])
    n_diff_possible = sum(len(a) * len(b) for x, a in enumerate(val.values()) for b in list(val.values())[x + 1 :])
    target = min(len(same), n_diff_possible)
    diff: list[tuple[Path, Path]] = []
    seen: set[tuple[int, int]] = set()
    while len(diff) < target:
        i, j = (int(v) for v in rng.integers(0, len(flat), 2))
        if owners[i] == owners[j]:
            continue
        key = (min(i, j), max(i, j))
        if key in seen:
            continue
        seen.add(key)
        diff.append((flat[i][1], flat[j][1]))

    def codes(p: Path) -> dict:
        try:
            return kc.parse_face_filename(p.name)
        except kc.CodeError:
            return {"id": p.parent.name}

    pairs = [Pair(a, b, True, codes(a), codes(b)) for a, b in same] + [
        Pair(a, b, False, codes(a), codes(b)) for a, b in diff
    ]
    order = rng.permutation(len(pairs))  # interleave, so any contiguous fold holds both kinds
    return [pairs[i] for i in order], len(same), len(diff)


def _build_split(
    staging: Path,
    groups: dict[str, list[Path]],
    sources: dict[Path, Path],
    train: tuple[str, ...],
    val: tuple[str, ...],
    out: Path,
    seed: int,
    max_pairs: int | None,
    test: tuple[str, ...] = (),
) -> tuple[bool, dict[str, int], tuple[int, int], tuple[int, int]]:
    """Write the whole split into ``staging``: linked photos, sources, classes, val (and test) pairs;
    returns (linked, images per part, (same, different) val pairs, (same, different) test pairs)."""
    from kface_cli.atomic import atomic_open
    from kface_cli.console import progress
    from kface_cli.formats.pairs import write_pairs_csv

    linked = True
    n_files = sum(len(groups[i]) for i in (*train, *val, *test))
    counts = {"train": 0, "val": 0, "test": 0}
    placed_sources: dict[str, Path] = {}  # path in the split -> source photo
    with progress("Splitting", total=n_files) as bar:
        for part, members in (("train", train), ("val", val), ("test", test)):
            for ident in members:
                for img in groups[ident]:
                    linked &= link_or_copy(img, staging / part / ident / img.name)
                    if img in sources:
                        placed_sources[f"{part}/{ident}/{img.name}"] = sources[img]
                    counts[part] += 1
                    bar.advance()
    if placed_sources:
        write_sources(staging / SOURCES_CSV, placed_sources, out)
    with atomic_open(staging / CLASSES_CSV, "w", newline="") as f:
        f.write("id,label\n")
        for label, ident in enumerate(train):
            f.write(f"{ident},{label}\n")
    val_groups = {i: sorted((staging / "val" / i).iterdir()) for i in val}
    pairs, n_same, n_diff = make_pairs(val_groups, seed=seed, max_pairs=max_pairs)
    write_pairs_csv(staging / VAL_PAIRS_CSV, pairs)
    t_same = t_diff = 0
    if test:
        test_groups = {i: sorted((staging / "test" / i).iterdir()) for i in test}
        t_pairs, t_same, t_diff = make_pairs(test_groups, seed=seed + 1, max_pairs=max_pairs)
        write_pairs_csv(staging / TEST_PAIRS_CSV, t_pairs)
    return linked, counts, (n_same, n_diff), (t_same, t_diff)


def split(
    workdir: str | Path | None = None,
    *,
    res: str = DEFAULT_RESOLUTION,
    faces_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    val_ids: int | None = None,
    val_frac: float | None = None,
    seed: int = 0,
    order: SplitOrder | str = SplitOrder.RANDOM,
    max_pairs: int | None = None,
    test_ids: int | None = None,
    test_frac: float | None = None,
) -> SplitResult:
    """Split the crops into identity-disjoint train/val(/test) folders; write classes and pairs."""
    from kface_cli.choices import check_seed

    check_seed(seed)
    from kface_cli.atomic import storage_error

    t0 = time.perf_counter()
    ws = Workspace.resolve(workdir)
    faces = (
        Path(faces_dir)
        if faces_dir is not None
        else ws.require(ws.faces(normalise_resolution(res)), f"{res} face crops", "kface crop")
    )
    out = Path(out_dir) if out_dir is not None else ws.split
    if not faces.is_dir():
        raise InputError(
            f"face crops folder not found: {faces}" if not faces.exists() else f"--faces must be a folder: {faces}",
            hint="Pass the folder `kface crop` wrote (faces/<res>), holding one sub-folder per identity.",
        )
    groups, sources = _identity_images(faces)
    if len(groups) < 3 + (MIN_TEST_IDS if test_ids is not None or test_frac is not None else 0):
        raise InputError(
            f"{len(groups)} identit{'y' if len(groups) == 1 else 'ies'} with crops in {faces}",
            hint="A train/val split needs at least 3 identities (5 with a test part); run `kface crop` on more data.",
        )
    if max_pairs is not None and max_pairs < 1:
        raise InputError(f"--max-pairs must be positive, got {max_pairs}")
    ids = sorted(groups)
    order = SplitOrder.parse(order, "--order")
    test = choose_test_ids(ids, test_ids=test_ids, test_frac=test_frac, seed=seed, order=order)
    rest = [i for i in ids if i not in set(test)]
    val = choose_val_ids(rest, val_ids=val_ids, val_frac=val_frac, seed=seed, order=order)
    train = tuple(i for i in rest if i not in set(val))
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test)), "parts must be disjoint"

    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        linked, counts, (n_same, n_diff), (t_same, t_diff) = _build_split(
            staging, groups, sources, train, val, out, seed, max_pairs, test
        )
    except BaseException as e:  # a full disk, Ctrl-C: the half-built split goes, the old one stays
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and (user_error := storage_error(e, getattr(e, "filename", None) or staging)):
            raise user_error from None
        raise
    # swap the finished split in; the pairs hold paths relative to the CSV, so they survive the move
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return SplitResult(
        out=out,
        train_ids=train,
        val_ids=val,
        train_images=counts["train"],
        val_images=counts["val"],
        same_pairs=n_same,
        diff_pairs=n_diff,
        linked=linked,
        classes_csv=out / CLASSES_CSV,
        pairs_csv=out / VAL_PAIRS_CSV,
        seed=seed,
        order=order.value,
        seconds=time.perf_counter() - t0,
        test_ids=test,
        test_images=counts["test"],
        test_same_pairs=t_same,
        test_diff_pairs=t_diff,
        test_pairs_csv=out / TEST_PAIRS_CSV if test else None,
    )
