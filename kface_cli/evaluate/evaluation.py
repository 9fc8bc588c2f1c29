"""``kface evaluate``: one model, one protocol, every metric, a report folder.

Protocols (pick one pair source; identification can run alongside):

- ``test`` (default in a workspace whose split has a test part, ``kface split --test-ids``) or
  ``val`` (``--split val``; the default without a test part): ``split/<part>_pairs.csv`` for
  verification, plus identification on ``split/<part>/``: each identity's most canonical image
  (S001, L1, E01, C7 when present, else the first by name) is enrolled and every other image is a
  probe; the last 20% of identities (sorted by ID, at least one, when there are 5 or more) are
  *not* enrolled, so their probes are the unknowns of the open-set metrics. On ``test``, thresholds
  (``--target-far``, ``--target-fpir``, ``--save-threshold``) are calibrated on ``val`` (a choice
  is never made on the data that reports it) and their operating point is measured again on test.
- ``pairs``: any pairs CSV (``--pairs``); ``lfw``: an LFW ``pairs.txt`` + image root;
  ``bin``: an insightface verification ``.bin``.
- ``identification``: ``--gallery-dir`` and ``--probe-dir`` (one sub-folder per identity); probes
  of identities without a gallery folder are the unknowns.

Use :func:`evaluate` from Python with an :class:`EvaluateOptions`, or :func:`evaluate_embedder` with an
:class:`~kface_cli.embedding.embedder.Embedder` you already hold (e.g. a model in memory).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.defaults import EMBED_BATCH_SIZE
from kface_cli.embedding import metrics as M
from kface_cli.errors import InputError, KFaceError
from kface_cli.evaluate import conditions as C

#: The canonical K-Face image enrolled per identity in the val-split identification protocol.
CANONICAL_CODES = {"acc": "S001", "light": "L1", "expr": "E01", "cam": "C7"}
#: Fraction of val identities kept out of the gallery as open-set unknowns.
UNKNOWN_FRACTION = 0.2
#: Fewest val identities for which some are held out as unknowns.
MIN_IDENTITIES_FOR_UNKNOWNS = 5


class Protocol(str, Enum):
    VAL = "val"
    TEST = "test"
    PAIRS = "pairs"
    LFW = "lfw"
    BIN = "bin"
    IDENTIFICATION = "identification"


#: The protocols that read a part of the workspace split (split/<part>_pairs.csv, split/<part>/).
SPLIT_PROTOCOLS = (Protocol.VAL, Protocol.TEST)


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate. Exactly one pair source at most (pairs / lfw_pairs / bin_file); with none
    and no gallery/probe folders, the workspace's split: ``split`` ("val" or "test"; default: test
    when the split has a test part, else val)."""

    model: str | None = None
    workdir: Path | None = None
    split: str | None = None
    network: str | None = None
    trust_model: bool = False  # let a TorchScript model run (it is a program; see docs/security.md)
    #: Flip-sum embeddings for the reported metrics (insightface protocol: normalize(emb(x) +
    #: emb(mirror x))). Thresholds are always calibrated without flip, as ``kface identify`` embeds.
    flip: bool = True
    backend: str = "auto"
    pairs: Path | None = None
    lfw_pairs: Path | None = None
    root: Path | None = None
    bin_file: Path | None = None
    gallery_dir: Path | None = None
    probe_dir: Path | None = None
    #: Calibrate the 1:1 threshold for this false accept rate (needs pairs).
    target_far: float | None = None
    #: Calibrate the 1:N threshold for this false positive identification rate (needs identification).
    target_fpir: float | None = None
    save_threshold: bool = False
    #: Save even over a calibration founded on more samples.
    replace_threshold: bool = False
    name: str | None = None
    batch_size: int = EMBED_BATCH_SIZE
    #: None: aligned crops as they are (other photos: "auto"). "detect", "annotation" or "auto":
    #: with the val split, every face is aligned again from its source photo with these landmarks
    #: (``detect``: accuracy as deployed); elsewhere, the landmarks of photos that are not crops.
    landmarks: str | None = None
    #: True: every image is an aligned crop, used as it is (``--aligned``); None: photos are
    #: checked (kface_cli.face.pipeline.faces_in_image: crop folders, faces on the template).
    aligned: bool | None = None
    write_report: bool = True
    fars: tuple[float, ...] = M.DEFAULT_FARS
    fpirs: tuple[float, ...] = M.DEFAULT_FPIRS


@dataclass
class Evaluation:
    """The result: ``summary`` is JSON-ready (what ``--json`` prints); arrays are kept for plots."""

    summary: dict
    dist: np.ndarray | None = None  # (N,) squared L2 per pair
    issame: np.ndarray | None = None  # (N,) bool
    report_dir: Path | None = None


def protocol_of(options: EvaluateOptions, ws: Any = None) -> Protocol | None:
    """The pair protocol chosen by the options (None: identification folders only); ``ws``, the
    workspace, decides the default split part (test when there is one)."""
    chosen = [
        p
        for p, v in (
            (Protocol.PAIRS, options.pairs),
            (Protocol.LFW, options.lfw_pairs),
            (Protocol.BIN, options.bin_file),
        )
        if v is not None
    ]
    if len(chosen) > 1:
        raise InputError(
            f"choose one pair source, got {', '.join(p.value for p in chosen)}",
            hint="Pass only one of --pairs, --lfw-pairs, --bin.",
        )
    if (options.gallery_dir is None) != (options.probe_dir is None):
        raise InputError("identification needs both --gallery-dir and --probe-dir")
    if options.lfw_pairs is not None and options.root is None:
        raise InputError(
            "--lfw-pairs needs --root, the folder holding <name>/<name>_0001.jpg", hint="Pass --root path/to/lfw."
        )
    for option, value in (("--target-far", options.target_far), ("--target-fpir", options.target_fpir)):
        if value is not None and not 0 < value < 1:
            raise InputError(f"{option} must be between 0 and 1, got {value}", hint=f"e.g. {option} 1e-2.")
    if options.split is not None:
        from kface_cli.choices import SplitPart

        part = SplitPart.parse(options.split, "--split")
        if chosen or options.gallery_dir is not None:
            raise InputError(
                f"--split {part} reports on the workspace's split; it cannot go with --pairs, --lfw-pairs, --bin or --gallery-dir",
                hint="Leave out --split, or the other data source.",
            )
        return Protocol(part.value)
    if chosen:
        return chosen[0]
    if options.gallery_dir is not None:
        return None
    return Protocol.TEST if ws is not None and ws.test_pairs.is_file() else Protocol.VAL


def evaluate(options: EvaluateOptions) -> Evaluation:
    """Load the model (``options.model``; default: the workspace's latest run) and evaluate it."""
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.workspace import Workspace

    ws = Workspace.resolve(options.workdir)
    protocol_of(options, ws)  # validate before the (slow) model load
    embedder = load_embedder(
        options.model,
        workdir=ws.root,
        network=options.network,
        flip=options.flip,
        backend=options.backend,
        trust_model=options.trust_model,
    )  # type: ignore[arg-type]
    return evaluate_embedder(embedder, options)


def _sanitise(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "report"


def default_report_name(embedder: Any, protocol: Protocol | None, options: EvaluateOptions) -> str:
    """``<model>-<protocol>``: ``demo-val``, ``demo-bin-lfw``, ``demo-lfw-pairs``, ``demo-pairs-mine``, ``demo-identification``."""
    src = getattr(embedder, "source", None)
    model = Path(src).stem if src is not None and Path(src).suffix else (Path(src).name if src is not None else "model")
    if protocol is Protocol.BIN:
        what = "bin-" + Path(options.bin_file).stem  # type: ignore[arg-type]
    elif protocol is Protocol.PAIRS:
        what = "pairs-" + Path(options.pairs).stem  # type: ignore[arg-type]
    elif protocol is Protocol.LFW:
        what = "lfw-" + Path(options.lfw_pairs).stem  # type: ignore[arg-type]
    elif protocol is None:
        what = "identification"
    else:
        what = protocol.value
    return _sanitise(f"{model}-{what}")


# ------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------


def _load_pairs(options: EvaluateOptions, protocol: Protocol, ws: Any):
    """Pair list (or prepared PairFaces for .bin) and a description of the source."""
    from kface_cli.formats.pairs import read_pairs_csv

    if protocol in SPLIT_PROTOCOLS:
        path = ws.require(
            ws.part_pairs(protocol.value),
            f"{protocol.value} pairs",
            "kface split" + (" --test-ids N" if protocol is Protocol.TEST else ""),
        )
        return read_pairs_csv(path), str(path)
    if protocol is Protocol.PAIRS:
        return read_pairs_csv(options.pairs), str(options.pairs)
    if protocol is Protocol.LFW:
        from kface_cli.formats.lfw import read_lfw_pairs

        root = Path(options.root)  # type: ignore[arg-type]
        if not root.is_dir():
            raise InputError(
                f"LFW image root not found: {root}", hint="Pass --root, the folder holding <name>/<name>_0001.jpg."
            )
        return read_lfw_pairs(options.lfw_pairs, root).pairs, str(options.lfw_pairs)  # type: ignore[arg-type]
    from kface_cli.formats.binset import read_bin

    return read_bin(options.bin_file), str(options.bin_file)  # type: ignore[arg-type]


def _embed_pairs(embedder: Any, prepared: Any, options: EvaluateOptions, cache: dict) -> Any:
    """Pair distances; each image's embedding goes into ``cache`` (identification reuses it)."""
    from kface_cli.embedding.photos import embed_pairs_detailed

    res = embed_pairs_detailed(embedder, prepared, batch_size=options.batch_size)
    ok = ~res.faces.failed  # type: ignore[operator]
    cache.update({n: e for n, e, k in zip(res.faces.names, res.embeddings, ok) if k})
    return res


def _verify(embedder: Any, options: EvaluateOptions, protocol: Protocol, ws: Any, cache: dict, loader: Any) -> dict:
    from kface_cli.embedding.photos import PairFaces, prepare_pairs

    source, description = _load_pairs(options, protocol, ws)
    t0 = time.perf_counter()
    prepared = source if isinstance(source, PairFaces) else prepare_pairs(source, loader=loader)
    res = _embed_pairs(embedder, prepared, options, cache if not isinstance(source, PairFaces) else {})
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    ver = M.verification_metrics(res.dist, res.issame, fars=options.fars)
    per_condition: dict = {}
    if not isinstance(source, PairFaces):
        c1, c2 = C.pair_codes(source)
        per_condition = C.verification_breakdown(
            res.dist, res.issame, c1, c2, threshold=ver["threshold"], fars=options.fars
        )
    t_metrics = time.perf_counter() - t1
    ver.update(
        pairs_source=description,
        n_images=len(res.faces.names),
        n_failed_images=int(res.faces.failed.sum()),  # type: ignore[union-attr]
        per_condition_verification=per_condition,
        timing={"embed_s": t_embed, "metrics_s": t_metrics},
    )
    return {"metrics": ver, "dist": res.dist, "issame": res.issame, "prepared": prepared}


# ------------------------------------------------------------------------------------------
# identification
# ------------------------------------------------------------------------------------------


def _canonical_rank(path: Path) -> tuple:
    codes = C.codes_of(path)
    return tuple(codes.get(k) != v for k, v in CANONICAL_CODES.items()) + (path.name,)


def val_identification_split(val_dir: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(gallery, probes) from ``split/val/<id>/``: see the module docstring for the rule."""
    from kface_cli.embedding.photos import list_identity_folder

    items = list_identity_folder(val_dir)
    by_id: dict[str, list[Path]] = {}
    for ident, path in items:
        by_id.setdefault(ident, []).append(path)
    ids = sorted(by_id)
    n_unknown = max(1, int(round(len(ids) * UNKNOWN_FRACTION))) if len(ids) >= MIN_IDENTITIES_FOR_UNKNOWNS else 0
    unknown = set(ids[len(ids) - n_unknown :])
    gallery, probes = [], []
    for ident in ids:
        paths = by_id[ident]
        if ident in unknown:
            probes += [(ident, p) for p in paths]
            continue
        enrolled = min(paths, key=_canonical_rank)
        gallery.append((ident, enrolled))
        probes += [(ident, p) for p in paths if p != enrolled]
    return gallery, probes


def _embed_identification(
    embedder: Any,
    gallery: list[tuple[str, Path]],
    probes: list[tuple[str, Path]],
    options: EvaluateOptions,
    cache: dict,
    loader: Any,
) -> dict:
    """Gallery and probe embeddings (faces found), with their labels and the probes' paths."""
    from kface_cli.embedding.photos import embed_paths

    g_emb, g_ok = embed_paths(
        embedder,
        [p for _, p in gallery],
        loader=loader,
        cache=cache,
        batch_size=options.batch_size,
        description="Gallery faces",
    )
    p_emb, p_ok = embed_paths(
        embedder,
        [p for _, p in probes],
        loader=loader,
        cache=cache,
        batch_size=options.batch_size,
        description="Probe faces",
    )
    if not g_ok.any():
        raise InputError("no face found in any gallery image")
    return {
        "probe_emb": p_emb[p_ok],
        "probe_labels": [lab for (lab, _), k in zip(probes, p_ok) if k],
        "probe_paths": [p for (_, p), k in zip(probes, p_ok) if k],
        # probes without a face: a miss for an enrolled person (see M.identification_metrics)
        "missed_labels": [lab for (lab, _), k in zip(probes, p_ok) if not k],
        "missed_paths": [p for (_, p), k in zip(probes, p_ok) if not k],
        "gallery_emb": g_emb[g_ok],
        "gallery_labels": [lab for (lab, _), k in zip(gallery, g_ok) if k],
    }


def _identification_metrics(embedded: dict, fpirs: tuple[float, ...]) -> dict:
    return M.identification_metrics(
        embedded["probe_emb"],
        embedded["probe_labels"],
        embedded["gallery_emb"],
        embedded["gallery_labels"],
        fpirs=fpirs,
        missed_labels=embedded["missed_labels"],
    )


def _identify(embedded: dict, options: EvaluateOptions, embed_s: float) -> dict:
    """The identification metrics of embedded gallery and probes, with the per-condition breakdown."""
    t1 = time.perf_counter()
    ident = _identification_metrics(embedded, options.fpirs)
    ident["per_condition_identification"] = C.identification_breakdown(
        [C.codes_of(p) for p in embedded["probe_paths"] + embedded["missed_paths"]], ident["probe_ranks"]
    )
    ident["n_gallery_images"] = len(embedded["gallery_labels"])
    ident["timing"] = {"embed_s": embed_s, "metrics_s": time.perf_counter() - t1}
    return ident


def _identification_sets(
    options: EvaluateOptions, protocol: Protocol | None, ws: Any
) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]] | None:
    """(gallery, probes) of the identification protocol, or None when there is none."""
    from kface_cli.embedding.photos import list_identity_folder

    if options.gallery_dir is not None:
        return list_identity_folder(options.gallery_dir), list_identity_folder(options.probe_dir)  # type: ignore[arg-type]
    if protocol in SPLIT_PROTOCOLS and ws.part_dir(protocol.value).is_dir():
        return val_identification_split(ws.part_dir(protocol.value))
    return None


# ------------------------------------------------------------------------------------------
# the whole evaluation
# ------------------------------------------------------------------------------------------

#: Keys of the JSON summary that are always present (None when a protocol does not produce them).
SUMMARY_KEYS = ("accuracy", "accuracy_std", "threshold", "auc", "eer", "tar_at_far", "rank1", "rank5", "per_condition")


def evaluate_embedder(embedder: Any, options: EvaluateOptions) -> Evaluation:
    """Evaluate an already loaded embedder (see :func:`evaluate`).

    The metrics use ``embedder`` as given (with or without flip). Thresholds (``target_far``,
    ``target_fpir``, ``save_threshold``) are calibrated on the embeddings ``kface identify`` makes,
    without flip: when ``embedder`` flips, the faces are embedded a second time without it, and the
    reported metrics stay those of ``embedder``.
    """
    from kface_cli.embedding.photos import FaceLoader
    from kface_cli.workspace import Workspace

    ws = Workspace.resolve(options.workdir)
    protocol = protocol_of(options, ws)
    sets = _identification_sets(options, protocol, ws)
    calibrating = options.target_far is not None or options.target_fpir is not None or options.save_threshold
    if calibrating:
        _check_calibration_inputs(options, protocol, sets)
    cache: dict[str, np.ndarray] = {}
    sources = None
    if options.landmarks is not None and protocol in SPLIT_PROTOCOLS:
        from kface_cli.prepare.split import read_sources

        sources = read_sources(ws.split)
    loader = FaceLoader(options.landmarks or "auto", sources=sources, aligned=options.aligned)
    describe = embedder.describe() if hasattr(embedder, "describe") else {"network": getattr(embedder, "network", None)}
    summary: dict[str, Any] = {
        "model": describe,
        "protocol": protocol.value if protocol else Protocol.IDENTIFICATION.value,
        # which part of the workspace split the numbers are measured on (None: other data)
        "split": protocol.value if protocol in SPLIT_PROTOCOLS else None,
    }
    summary.update({k: None for k in SUMMARY_KEYS})
    dist = issame = prepared = None

    ver_conditions: dict = {}
    if protocol is not None:
        v = _verify(embedder, options, protocol, ws, cache, loader)
        ver = v["metrics"]
        dist, issame, prepared = v["dist"], v["issame"], v["prepared"]
        ver_conditions = ver.pop("per_condition_verification")
        summary["timing_verification"] = ver.pop("timing")
        summary.update(ver)

    id_conditions: dict = {}
    if sets is not None:
        t0 = time.perf_counter()
        embedded = _embed_identification(embedder, *sets, options, cache, loader)
        ident = _identify(embedded, options, embed_s=time.perf_counter() - t0)
        id_conditions = ident.pop("per_condition_identification")
        summary["timing_identification"] = ident.pop("timing")
        probe_ranks = ident.pop("probe_ranks")
        summary.update({k: v for k, v in ident.items()})
        part_dir = ws.part_dir(protocol.value) if protocol in SPLIT_PROTOCOLS else None
        summary["identification"] = {
            "gallery": str(options.gallery_dir or part_dir),
            "probes": str(options.probe_dir or part_dir),
            "n_probe_ranks": len(probe_ranks),
            "no_face_rule": "a probe without a face: a miss for an enrolled person (rank-k, DIR); "
            "a stranger's is given no name and left out of FPIR",
        }
    summary["per_condition"] = C.merge_breakdowns(ver_conditions, id_conditions) or None
    summary["landmarks"] = landmark_report(
        options.landmarks, loader.outcomes, realigned=sources is not None, low_light=loader.low_light
    )
    summary["landmarks"]["detector_only"] = (
        detector_only_accuracy(prepared, dist, issame, loader.outcomes) if dist is not None else None
    )
    summary["condition_rule"] = (
        "verification: a pair counts under a condition when either image has it; identification: by the probe image"
    )

    if calibrating:
        summary["calibration"] = _calibrate(
            embedder, options, summary, prepared, sets, (dist, issame, cache), loader, protocol=protocol, ws=ws
        )

    evaluation = Evaluation(summary=summary, dist=dist, issame=issame)
    if options.write_report:
        from kface_cli.evaluate.report import write_report

        name = _sanitise(options.name) if options.name else default_report_name(embedder, protocol, options)
        evaluation.report_dir = write_report(evaluation, ws.reports / name)
        summary["report_dir"] = str(evaluation.report_dir)
    return evaluation


def landmark_report(
    mode: str | None, outcomes: dict[str, str], *, realigned: bool, low_light: Collection[str] = ()
) -> dict:
    """Where the faces' landmarks came from, and per K-Face condition the faces the detector missed
    (``no_face``), those it missed that were taken from their annotation instead (``fallback``)
    and those it found only in a contrast-enhanced copy of a dark photo (``low_light``).

    A face without landmarks cannot be compared: its pairs count as rejected and, as a probe of an
    enrolled person, it is a miss in rank-k and DIR (as a deployed system would fail on it).
    """
    from kface_cli.face.detector import ANNOTATION_FALLBACK

    sources = Counter(v or "none" for v in outcomes.values())
    by_factor: dict[str, dict[str, dict[str, int]]] = {}
    for path, found in outcomes.items():
        codes = C.codes_of(Path(path))
        for factor, _ in C.FACTORS:
            if factor in codes:
                entry = by_factor.setdefault(factor, {}).setdefault(
                    codes[factor], {"images": 0, "no_face": 0, "fallback": 0, "low_light": 0}
                )
                entry["images"] += 1
                entry["no_face"] += not found
                entry["fallback"] += found == ANNOTATION_FALLBACK
                entry["low_light"] += path in low_light
    return {
        "mode": mode or "aligned crops as they are",
        "realigned_from_source_photos": realigned,
        "images": len(outcomes),
        "no_face": sources.get("none", 0),
        "sources": dict(sources),
        "by_condition": {
            factor: {code: rows[code] for code in sorted(rows, key=C.code_sort_key)}
            for factor, rows in by_factor.items()
        },
    }


def detector_only_accuracy(
    prepared: Any, dist: np.ndarray, issame: np.ndarray, outcomes: dict[str, str]
) -> dict | None:
    """10-fold accuracy when the faces taken from their annotation (the detector missed them)
    count as missed too: their pairs rejected. None when no face fell back."""
    from kface_cli.embedding.photos import FAILED_DISTANCE
    from kface_cli.face.detector import ANNOTATION_FALLBACK

    fell_back = np.array([outcomes.get(n) == ANNOTATION_FALLBACK for n in prepared.names], dtype=bool)
    if not fell_back.any():
        return None
    strict = dist.copy()
    strict[fell_back[prepared.idx1] | fell_back[prepared.idx2]] = FAILED_DISTANCE
    ver = M.verification_metrics(strict, issame)
    return {
        "accuracy": ver["accuracy"],
        "accuracy_std": ver["accuracy_std"],
        "images_without_detection": int(fell_back.sum() + prepared.failed.sum()),
    }


# ------------------------------------------------------------------------------------------
# threshold calibration (for kface identify)
# ------------------------------------------------------------------------------------------


def _check_calibration_inputs(options: EvaluateOptions, protocol: Protocol | None, sets: Any) -> None:
    """Before any embedding: each requested calibration has the data it needs."""
    if options.target_fpir is not None and sets is None:
        raise InputError(
            "--target-fpir calibrates the 1:N threshold and needs identification data",
            hint="Pass --gallery-dir and --probe-dir (probes of people not enrolled are the strangers), or use the val split.",
        )
    wants_pairs = options.target_far is not None or (options.save_threshold and options.target_fpir is None)
    if wants_pairs and protocol is None:
        raise InputError(
            "a 1:1 threshold (--target-far, or --save-threshold alone) needs verification pairs",
            hint="Evaluate on pairs (val split, --pairs, --lfw-pairs or --bin), or pass --target-fpir for a 1:N threshold.",
        )


def _calibrate(
    embedder: Any,
    options: EvaluateOptions,
    summary: dict,
    prepared: Any,
    sets: Any,
    scores: tuple[np.ndarray | None, np.ndarray | None, dict],
    loader: Any,
    *,
    protocol: Protocol | None = None,
    ws: Any = None,
) -> dict[str, dict]:
    """``{kind: calibration}`` for each requested threshold, on identify's embeddings (no flip),
    saved beside the model with ``save_threshold`` unless a better-founded one is there.

    On the test split the threshold is chosen on val (``calibrated_on``) and its operating point
    measured again on test (``on_test``): a rate read on the data that chose it is optimistic."""
    from kface_cli.console import warn
    from kface_cli.embedding import calibration as K

    twin = K.without_flip(embedder)
    dist, issame, cache = scores
    if twin is not embedder:  # the reported metrics used flip: embed again as identify does
        cache = {}
        if prepared is not None:
            res = _embed_pairs(twin, prepared, options, cache)
            dist, issame = res.dist, res.issame
    wants_pairs = options.target_far is not None or (options.save_threshold and options.target_fpir is None)
    on_test = protocol is Protocol.TEST
    cal_dist, cal_issame, cal_sets, cal_summary, cal_cache = dist, issame, sets, summary, cache
    if on_test:
        from kface_cli.embedding.photos import prepare_pairs
        from kface_cli.formats.pairs import read_pairs_csv

        cal_cache = {}
        cal_summary = {"pairs_source": str(ws.val_pairs), "identification": {"gallery": str(ws.val_dir)}}
        if wants_pairs:
            val_pairs = read_pairs_csv(ws.require(ws.val_pairs, "val pairs", "kface split"))
            val_res = _embed_pairs(twin, prepare_pairs(val_pairs, loader=loader), options, cal_cache)
            cal_dist, cal_issame = val_res.dist, val_res.issame
        if options.target_fpir is not None:
            cal_sets = val_identification_split(ws.require(ws.val_dir, "val faces", "kface split"))
    calibrated_on = "val" if protocol in SPLIT_PROTOCOLS else (protocol.value if protocol else "identification")
    out: dict[str, dict] = {}
    if wants_pairs:
        cal = _verification_threshold(cal_dist, cal_issame, options, cal_summary)  # type: ignore[arg-type]
        if on_test:
            t = cal["threshold"]
            cal["on_test"] = {
                "tar": float(np.mean(dist[issame] < t)),  # type: ignore[index]
                "far": float(np.mean(dist[~issame] < t)),  # type: ignore[index,operator]
                "n_same": int(issame.sum()),  # type: ignore[union-attr]
                "n_diff": int((~issame).sum()),  # type: ignore[operator]
                "pairs": summary.get("pairs_source"),
            }
        out[K.VERIFICATION] = cal
    if options.target_fpir is not None:
        embedded = _embed_identification(twin, *cal_sets, options, cal_cache, loader)
        cal = _identification_threshold(embedded, options.target_fpir, cal_summary)
        if on_test:
            test_embedded = _embed_identification(twin, *sets, options, cache, loader)
            cal["on_test"] = M.identification_at_threshold(
                test_embedded["probe_emb"],
                test_embedded["probe_labels"],
                test_embedded["gallery_emb"],
                test_embedded["gallery_labels"],
                cal["threshold"],
                missed_labels=test_embedded["missed_labels"],
            )
        if not cal["measurable_by_people"]:
            warn(f"1:N threshold for FPIR {options.target_fpir:g}: {cal['people_reason']}; the rate is read on images")
        out[K.IDENTIFICATION] = cal
    for kind, cal in out.items():
        cal["calibrated_on"] = calibrated_on
        cal["flip"] = bool(getattr(twin, "flip", False))
        K.check(kind, cal)
        if not options.save_threshold:
            continue
        weaker = K.weaker_than_saved(twin, kind, cal)
        if weaker and not options.replace_threshold:
            cal["not_saved"] = f"{weaker} (--replace-threshold saves it anyway)"
            warn(f"{kind} threshold not saved: {cal['not_saved']}")
        else:
            if weaker:
                warn(f"replacing a better-founded {kind} threshold: {weaker}")
            cal["saved_to"] = str(K.save_calibration(twin, kind, cal))
    return out


def _verification_threshold(dist: np.ndarray, issame: np.ndarray, options: EvaluateOptions, summary: dict) -> dict:
    """The 1:1 threshold meeting ``target_far``, or the best-accuracy one of these pairs."""
    n_same, n_diff = int(issame.sum()), int((~issame).sum())
    counts = {"n_pairs": int(issame.size), "n_same": n_same, "n_diff": n_diff, "pairs": summary.get("pairs_source")}
    if options.target_far is not None:
        reason = M.far_unsupported_reason(n_diff, options.target_far)
        res = None if reason else M.tar_at_far(dist, issame, options.target_far)
        if res is None:
            raise KFaceError(
                f"cannot calibrate for FAR {options.target_far:g}: {reason or 'no same-person pairs'}",
                hint="Use a larger --target-far or more pairs (e.g. a larger val split).",
            )
        tar, threshold = res
        return {
            "criterion": "target_far",
            "target_far": options.target_far,
            "threshold": threshold,
            "tar": tar,
            "achieved_far": float(np.mean(dist[~issame] < threshold)),
            **counts,
        }
    if n_same == 0 or n_diff == 0 or dist.size < 2:
        raise KFaceError(
            f"no best-accuracy threshold in pairs with {n_same} same-person and {n_diff} different-person pairs",
            hint="Calibrate on pairs of both kinds, or pass --target-far.",
        )
    best = M.ten_fold_accuracy(dist, issame, nfolds=1)
    threshold = best["threshold"]
    return {
        "criterion": "best_accuracy",
        "target_far": None,
        "threshold": threshold,
        "tar": float(np.mean(dist[issame] < threshold)),
        "achieved_far": float(np.mean(dist[~issame] < threshold)),
        **counts,
    }


def _identification_threshold(embedded: dict, target_fpir: float, summary: dict) -> dict:
    """The 1:N threshold at which at most ``target_fpir`` of the not-enrolled probes get a name."""
    ident = _identification_metrics(embedded, (target_fpir,))
    at = ident["dir_at_fpir"][M.far_key(target_fpir)]
    if at["dir"] is None:
        raise KFaceError(
            f"cannot calibrate for FPIR {target_fpir:g}: {at['reason']}",
            hint="Use a larger --target-fpir, or more probes of people who are not enrolled.",
        )
    return {
        "criterion": "target_fpir",
        "target_fpir": target_fpir,
        "threshold": at["threshold"],
        "dir": at["dir"],
        "achieved_fpir": at["achieved_fpir"],
        "n_known": ident["n_known"],
        "n_unknown": ident["n_unknown"],
        "n_strangers": ident["n_strangers"],
        "measurable_by_people": at["measurable_by_people"],
        **({"people_reason": at["people_reason"]} if at.get("people_reason") else {}),
        "n_identities": ident["n_identities"],
        "gallery": (summary.get("identification") or {}).get("gallery"),
    }
