"""Noisy-label cleaning with sub-center ArcFace (``kface clean``), as in the ArcFace paper (TPAMI).

A run trained with ``--loss subcenter`` keeps K centres per identity. Training pulls each image
towards the *nearest* centre of its class, so clean faces gather on one sub-centre and the
noise (wrong-identity images, outliers) drifts to the others::

    embeddings (N, D) . centres (C, K, D)      both L2-normalised
    nearest sub-centre of its own class         per image
    dominant sub-centre of a class              the one most of its images are nearest to
    angle    to its own class's dominant sub-centre
    margin   angle minus the angle to the nearest other class's dominant sub-centre

Two rules flag an image (``--rule``): ``angle > threshold`` (the authors' rule: 75 degrees, the
default of their ``drop.py`` in insightface's recognition/subcenter_arcface, whose README says
"> 75 degrees") or
``margin > threshold`` (the default, 12 degrees: the image looks more like another identity).
On the sample data the angle alone cannot tell a mislabelled face from a hard but correctly
labelled one (the darkest light, the most extreme camera): both sit far from their identity's
dominant sub-centre. A mislabelled face also sits near its true identity's dominant sub-centre;
a hard face is near none (README, "The paper's other two results").

A class whose dominant sub-centre holds less than half of its images is itself suspect (two
people under one name, or mostly noise) and is reported as a minority identity.

The run's ``checkpoint.pt`` is read (its backbone is the one the centres were trained with;
``backbone.pth`` is only the best epoch's), with the training folder it was trained on:
classes are the folder's sorted identity sub-folders, as in training.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.choices import CleanRule
from kface_cli.defaults import CLEAN_ANGLE_DEG, CLEAN_MARGIN_DEG, CLEAN_SHEET_MAX
from kface_cli.errors import InputError, KFaceError, ModelMismatchError

DEFAULT_THRESHOLD_DEG = {CleanRule.MARGIN: CLEAN_MARGIN_DEG, CleanRule.ANGLE: CLEAN_ANGLE_DEG}
DEFAULT_RULE = CleanRule.MARGIN
MINORITY_SHARE = 0.5  # a dominant sub-centre holding less than this share of its class is reported
SHEET_COLUMNS = 3  # entries per row; an entry: flagged face | its identity's typical face | the nearest identity's
ANGLE_BIN_DEG = 10  # histogram bins of the angle distribution
EMBED_BATCH = 128
NEAREST_CHUNK = 256  # images scored against every dominant centre at once (memory: chunk x C floats)
CSV_NAME = "clean.csv"
SHEET_NAME = "contact_sheet.png"
CSV_COLUMNS = ("path", "identity", "angle", "margin", "nearest_identity", "subcenter", "dominant_subcenter", "flagged")


# ------------------------------------------------------------------------------------------
# The method: pure numpy
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubcenterAssignment:
    """Where each image sits among its class's sub-centres."""

    subcenter: np.ndarray  # (N,) nearest sub-centre of the image's own class
    counts: np.ndarray  # (C, K) images of each class nearest each of its sub-centres
    dominant: np.ndarray  # (C,) the sub-centre most of the class's images are nearest to
    angle: np.ndarray  # (N,) degrees between the image and its class's dominant sub-centre
    nearest_class: np.ndarray  # (N,) the other class whose dominant sub-centre is nearest
    nearest_angle: np.ndarray  # (N,) degrees to that sub-centre (180 when there is no other class)

    @property
    def margin(self) -> np.ndarray:
        """(N,) degrees by which another class's dominant sub-centre is nearer than the own one's."""
        return self.angle - self.nearest_angle

    def dominant_share(self) -> np.ndarray:
        """(C,) share of each class's images nearest its dominant sub-centre (0 for empty classes)."""
        totals = self.counts.sum(axis=1)
        held = self.counts[np.arange(len(self.dominant)), self.dominant]
        return np.divide(held, totals, out=np.zeros(len(totals)), where=totals > 0)


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def assign_subcenters(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> SubcenterAssignment:
    """Sub-centre assignment of ``embeddings`` (N, D) with class ``labels`` (N,) to ``centres`` (C, K, D)."""
    x, w = _unit(embeddings), _unit(centres)
    labels = np.asarray(labels, dtype=np.int64)
    C, K, D = w.shape
    assert x.shape == (len(labels), D), f"embeddings {x.shape} vs labels {labels.shape} and centres {w.shape}"
    own = np.einsum("nd,nkd->nk", x, w[labels])  # (N, K) cosines to the own class's sub-centres
    subcenter = own.argmax(axis=1)  # (N,)
    counts = np.bincount(labels * K + subcenter, minlength=C * K).reshape(C, K)
    dominant = counts.argmax(axis=1)  # (C,); ties: the lowest index
    cos_dominant = own[np.arange(len(labels)), dominant[labels]]  # (N,)
    dominant_centres = w[np.arange(C), dominant]  # (C, D)
    nearest = np.empty(len(labels), dtype=np.int64)
    cos_nearest = np.empty(len(labels), dtype=np.float32)
    for s in range(0, len(labels), NEAREST_CHUNK):
        cos = x[s : s + NEAREST_CHUNK] @ dominant_centres.T  # (chunk, C)
        cos[np.arange(len(cos)), labels[s : s + NEAREST_CHUNK]] = -2.0  # not the own class (-> 180 degrees)
        nearest[s : s + NEAREST_CHUNK] = cos.argmax(axis=1)
        cos_nearest[s : s + NEAREST_CHUNK] = cos.max(axis=1)
    return SubcenterAssignment(subcenter, counts, dominant, _degrees(cos_dominant), nearest, _degrees(cos_nearest))


def _degrees(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def flag_images(assignment: SubcenterAssignment, threshold: float, rule: CleanRule | str = DEFAULT_RULE) -> np.ndarray:
    """(N,) True for the images whose ``rule`` angle (module doc) exceeds ``threshold`` degrees."""
    rule = CleanRule.parse(rule, "rule")
    return (assignment.margin if rule == CleanRule.MARGIN else assignment.angle) > threshold


def angle_histogram(angles: np.ndarray, bin_deg: int = ANGLE_BIN_DEG) -> list[dict[str, Any]]:
    """Counts per ``bin_deg``-degree bin, from 0 up to the bin holding the largest angle."""
    top = max(bin_deg, int(math.ceil((float(angles.max()) if len(angles) else 0.0) / bin_deg)) * bin_deg)
    counts, edges = np.histogram(angles, bins=np.arange(0, top + bin_deg, bin_deg))
    return [{"from": int(a), "to": int(b), "images": int(c)} for a, b, c in zip(edges[:-1], edges[1:], counts)]


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlaggedImage:
    path: str
    identity: str
    angle: float  # degrees to its identity's dominant sub-centre
    margin: float  # degrees by which nearest_identity's dominant sub-centre is nearer
    nearest_identity: str  # the other identity whose dominant sub-centre is nearest


@dataclass(frozen=True)
class IdentityReport:
    identity: str
    images: int
    flagged: int
    dominant_subcenter: int
    dominant_share: float
    median_angle: float
    minority: bool  # the dominant sub-centre holds less than MINORITY_SHARE of the images


@dataclass
class CleanResult:
    run: Path
    data: Path
    rule: CleanRule
    threshold: float
    subcenters: int
    images: int
    flagged: list[FlaggedImage]
    identities: list[IdentityReport]
    angles: dict[str, Any]  # percentiles and histogram of the angle, percentiles of the margin
    csv: Path
    contact_sheet: Path | None
    applied: dict[str, Any] | None = None  # --apply: out, kept, removed, linked
    seconds: float = 0.0

    def minority_identities(self) -> list[IdentityReport]:
        return [i for i in self.identities if i.minority]

    def to_json(self) -> dict[str, Any]:
        return {
            "run": str(self.run),
            "data": str(self.data),
            "rule": str(self.rule),
            "threshold": self.threshold,
            "subcenters": self.subcenters,
            "images": self.images,
            "flagged": [asdict(f) for f in self.flagged],
            "identities": [asdict(i) for i in self.identities],
            "minority_identities": [i.identity for i in self.minority_identities()],
            "angles": self.angles,
            "csv": str(self.csv),
            "contact_sheet": str(self.contact_sheet) if self.contact_sheet else None,
            "applied": self.applied,
            "seconds": round(self.seconds, 2),
        }


# ------------------------------------------------------------------------------------------
# Outputs: CSV, contact sheet, cleaned copy
# ------------------------------------------------------------------------------------------


def write_csv(
    path: Path, paths: list[Path], classes: list[str], labels: np.ndarray, a: SubcenterAssignment, flagged: np.ndarray
) -> None:
    from kface_cli.atomic import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, p in enumerate(paths):
        c = int(labels[i])
        w.writerow(
            [
                p,
                classes[c],
                f"{a.angle[i]:.2f}",
                f"{a.margin[i]:.2f}",
                classes[a.nearest_class[i]],
                int(a.subcenter[i]),
                int(a.dominant[c]),
                int(flagged[i]),
            ]
        )
    write_text(path, buf.getvalue())


def _labelled(face: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    from kface_cli.deploy.draw import blend_label, render_text

    out = face.copy()
    mask = render_text(text, 14)
    blend_label(out, mask, 0, out.shape[0] - mask.shape[0] - 6, colour)
    return out


def contact_sheet(entries: list[tuple[np.ndarray, str, np.ndarray, str, np.ndarray, str]]) -> np.ndarray:
    """Rows of (flagged face, label, typical face of its identity, label, typical face of the
    nearest identity, label), ``SHEET_COLUMNS`` entries per row, 2 px gaps; BGR uint8."""
    from kface_cli.deploy.draw import KNOWN_COLOUR, UNKNOWN_COLOUR

    size = entries[0][0].shape[0]
    gap = 2
    tiles = []
    for flagged, fl, own, ol, near, nl in entries:
        parts = [
            _labelled(flagged, fl, UNKNOWN_COLOUR),
            _labelled(own, ol, KNOWN_COLOUR),
            _labelled(near, nl, (160, 110, 40)),
        ]
        tiles.append(np.concatenate([parts[0], np.full((size, gap, 3), 255, np.uint8), parts[1], parts[2]], axis=1))
    tile_h, tile_w = tiles[0].shape[:2]
    cols = min(SHEET_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * (tile_h + 4 * gap) - 4 * gap, cols * (tile_w + 6 * gap) - 6 * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = r * (tile_h + 4 * gap), c * (tile_w + 6 * gap)
        sheet[y : y + tile_h, x : x + tile_w] = tile
    return sheet


def write_cleaned_copy(
    paths: list[Path], identities: list[str], keep: np.ndarray, out: Path, data: Path
) -> dict[str, Any]:
    """Hard-link every kept image into ``out/<identity>/`` (copies where linking is impossible).

    ``out`` must be new (or an empty folder) and outside ``data``; it appears complete or not at
    all. The originals are never touched.
    """
    from kface_cli.prepare.split import link_or_copy

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(
            f"--apply {out} already exists", hint="Choose a new folder: kface never writes into an existing one."
        )
    if out.resolve().is_relative_to(data.resolve()):
        raise InputError(
            f"--apply {out} is inside the training folder {data}",
            hint="Write the cleaned copy elsewhere (it would become an identity of the data).",
        )
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    linked = True
    try:
        for p, ident, k in zip(paths, identities, keep):
            if k:
                linked &= link_or_copy(p, staging / ident / p.name)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"out": str(out), "kept": int(keep.sum()), "removed": int((~keep).sum()), "hard_links": linked}


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------


def _training_folder(data: str | Path | None, config: dict[str, Any], workdir: Path | None) -> Path:
    from kface_cli.workspace import Workspace

    given = data if data is not None else config.get("data")
    if given is None:
        ws = Workspace.resolve(workdir if workdir is not None else config.get("workdir"))
        return ws.require(ws.train_dir, "training data", "kface split")
    if str(given).startswith("synthetic:"):
        raise InputError(f"the run was trained on random data ({given}): nothing to clean", hint="Pass --data.")
    return Path(given).expanduser()


def clean_run(
    model: str | Path | None = None,
    *,
    data: str | Path | None = None,
    rule: CleanRule | str = DEFAULT_RULE,
    threshold: float | None = None,
    report: str | Path | None = None,
    apply_to: str | Path | None = None,
    sheet_max: int | None = None,
    workdir: Path | None = None,
) -> CleanResult:
    """Flag the training images that sit with another identity or far from their own (``kface clean``).

    Args:
        model: a run trained with ``--loss subcenter`` (folder, name or its checkpoint.pt);
            default the workspace's latest run.
        data: its training folder (``<id>/*.jpg``) \\[default: the one the run was trained on].
        rule: ``margin`` flags images nearer another identity's dominant sub-centre than their own
            by more than ``threshold`` degrees; ``angle`` (the paper's) images farther than
            ``threshold`` degrees from their own identity's dominant sub-centre.
        threshold: the rule's cut in degrees \\[default: DEFAULT_THRESHOLD_DEG of the rule].
        report: folder for ``clean.csv`` and ``contact_sheet.png`` \\[default: reports/clean-<run>].
        apply_to: also write a cleaned copy of the training folder here (hard links).
        sheet_max: flagged faces on the contact sheet (0: no sheet) \\[default: CLEAN_SHEET_MAX].
    """
    from kface_cli import console
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import build_backbone, load_run_checkpoint
    from kface_cli.face.imageio import write_image
    from kface_cli.train.datasets import FolderDataset
    from kface_cli.workspace import Workspace

    t0 = time.perf_counter()
    rule = CleanRule.parse(rule, "rule")
    threshold = DEFAULT_THRESHOLD_DEG[rule] if threshold is None else float(threshold)
    sheet_max = CLEAN_SHEET_MAX if sheet_max is None else int(sheet_max)
    if not 0.0 <= threshold < 180.0:
        raise KFaceError(f"--threshold is an angle in degrees between 0 and 180, got {threshold:g}")
    if sheet_max < 0:
        raise KFaceError(f"--sheet-max must be 0 or more, got {sheet_max}")
    ckpt = load_run_checkpoint(model, workdir)
    weight = ckpt.head.get("weight")
    C = ckpt.num_classes
    K = int(weight.shape[0]) // C if hasattr(weight, "dim") and weight.dim() == 2 and C > 0 else 0
    if K < 2 or K * C != int(weight.shape[0]):
        loss = ckpt.config.get("loss", "?")
        raise InputError(
            f"{ckpt.source} was trained with --loss {loss} ({max(K, 1)} centre per identity): clean needs sub-centres",
            hint="Train with --loss subcenter (K=3 sub-centres per identity) on the folder to clean, then run kface clean on that run.",
        )
    folder = _training_folder(data, ckpt.config, workdir)
    dataset = FolderDataset(folder, flip=False, preload=False)
    if dataset.num_classes != C:
        raise ModelMismatchError(
            f"{folder} has {dataset.num_classes} identities, the run was trained on {C}",
            hint="Pass the run's own training folder with --data.",
        )
    module, network, size = build_backbone(ckpt.weights)
    embedder = embedder_from_module(
        module, network=network, backend="auto", source=ckpt.source, embedding_size=size, cache_onnx=True
    )
    n = len(dataset)
    embeddings = np.empty((n, size), dtype=np.float32)
    with console.progress("Embedding training faces", total=n) as bar:
        for s in range(0, n, EMBED_BATCH):
            idx = range(s, min(n, s + EMBED_BATCH))
            embeddings[s : s + len(idx)] = embedder.embed(np.stack([dataset.image(i) for i in idx]))
            bar.advance(len(idx))
    centres = weight.float().numpy().reshape(C, K, -1)
    a = assign_subcenters(embeddings, dataset.labels, centres)
    flagged_mask = flag_images(a, threshold, rule)
    classes, labels, paths = dataset.classes, dataset.labels, dataset.paths

    score = a.margin if rule == CleanRule.MARGIN else a.angle
    order = np.argsort(-score[flagged_mask], kind="stable")
    idx_flagged = np.flatnonzero(flagged_mask)[order]
    flagged = [
        FlaggedImage(
            str(paths[i]),
            classes[labels[i]],
            round(float(a.angle[i]), 2),
            round(float(a.margin[i]), 2),
            classes[a.nearest_class[i]],
        )
        for i in idx_flagged
    ]
    share = a.dominant_share()
    identities = []
    for c, name in enumerate(classes):
        mine = labels == c
        identities.append(
            IdentityReport(
                name,
                int(mine.sum()),
                int(flagged_mask[mine].sum()),
                int(a.dominant[c]),
                round(float(share[c]), 3),
                round(float(np.median(a.angle[mine])), 2),
                bool(share[c] < MINORITY_SHARE),
            )
        )
    angles = {
        "median": round(float(np.median(a.angle)), 2),
        "p5": round(float(np.percentile(a.angle, 5)), 2),
        "p95": round(float(np.percentile(a.angle, 95)), 2),
        "max": round(float(a.angle.max()), 2),
        "histogram": angle_histogram(a.angle),
        "margin": {
            k: round(float(np.percentile(a.margin, q)), 2) for k, q in (("median", 50), ("p95", 95), ("max", 100))
        },
    }

    ws = Workspace.resolve(workdir)
    out_dir = Path(report) if report is not None else ws.reports / f"clean-{ckpt.source.parent.name}"
    csv_path = out_dir / CSV_NAME
    write_csv(csv_path, paths, classes, labels, a, flagged_mask)
    sheet_path = None
    if sheet_max and len(idx_flagged):
        typical = {}  # class -> its image nearest its dominant sub-centre
        for c in range(C):
            mine = np.flatnonzero(labels == c)
            typical[c] = int(mine[np.argmin(a.angle[mine])])
        entries = []
        shown = "{:+.0f}\N{DEGREE SIGN}" if rule == CleanRule.MARGIN else "{:.0f}\N{DEGREE SIGN}"
        for i in idx_flagged[:sheet_max]:
            own, near = int(labels[i]), int(a.nearest_class[i])
            entries.append(
                (dataset.image(i), shown.format(score[i]), dataset.image(typical[own]), classes[own],
                 dataset.image(typical[near]), classes[near])
            )  # fmt: skip
        sheet_path = out_dir / SHEET_NAME
        write_image(sheet_path, contact_sheet(entries))
    applied = None
    if apply_to is not None:
        applied = write_cleaned_copy(paths, [classes[c] for c in labels], ~flagged_mask, Path(apply_to), folder)
    return CleanResult(
        run=ckpt.source.parent,
        data=folder,
        rule=rule,
        threshold=threshold,
        subcenters=K,
        images=n,
        flagged=flagged,
        identities=identities,
        angles=angles,
        csv=csv_path,
        contact_sheet=sheet_path,
        applied=applied,
        seconds=time.perf_counter() - t0,
    )
