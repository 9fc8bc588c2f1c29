"""Sizes and defaults shared by the domain modules and the CLI's help texts, each defined once.

This module imports nothing, so ``kface --help`` can build its texts from these values without
loading numpy or torch; the domain modules import them from here rather than retyping them.
"""

from __future__ import annotations

import os

#: Side of an aligned face crop and of the network input (insightface's ArcFace template).
FACE_SIZE = 112
#: Square sizes that may be already aligned crops (insightface's 112, and 2x crops of High-res data):
#: the detector checks them (kface_cli.face.pipeline).
ALIGNED_CROP_SIDES = (FACE_SIZE, 2 * FACE_SIZE)
#: ``kface crop`` writes its settings here, beside the person folders of its output (which marks
#: the folder as aligned crops); ``kface split`` writes its classes here.
CROP_SETTINGS_FILE = "crop.json"
SPLIT_CLASSES_FILE = "classes.csv"
#: The parts ``kface split`` writes under ``split/`` (identity-disjoint; ``test`` only with --test-ids/--test-frac).
SPLIT_PARTS = ("train", "val", "test")

#: Parallel workers (threads, processes, DataLoader workers) chosen automatically: one per CPU
#: core, at most this many (more rarely helps: a 112x112 JPEG decodes in well under a millisecond).
MAX_AUTO_WORKERS = 8

#: ``kface sample-data``: synthetic identities generated.
SAMPLE_IDENTITIES = 40
#: ``kface split``: validation identities (a quarter of a set smaller than four times this).
DEFAULT_VAL_IDS = 10

#: Squared L2 distance (2 - 2 cos) below which a face is named when the model has no calibration
#: (the tutorial's; cosine :data:`DEFAULT_THRESHOLD_COSINE`).
DEFAULT_THRESHOLD = 1.5
DEFAULT_THRESHOLD_COSINE = 1.0 - DEFAULT_THRESHOLD / 2.0
#: Identities listed per face by ``kface identify``.
DEFAULT_TOP_K = 3
#: ``--index auto`` searches exactly (flat) up to this many templates, then with IVF.
AUTO_FLAT_MAX = 50_000

#: Photos embedded and committed to the gallery together by ``kface enroll``.
ENROLL_BATCH_SIZE = 32
#: Faces per forward pass (``kface evaluate``, ``identify``, ``embed``; training-time validation).
EMBED_BATCH_SIZE = 64

#: Largest squared L2 distance between unit vectors (``2 - 2 cos`` for opposite vectors); also
#: the distance given to a pair whose photo has no face, so it counts as rejected.
MAX_DISTANCE = 4.0
#: ArcFace's logit scale s (the cosine logits are multiplied by it), as in insightface.
DEFAULT_LOGIT_SCALE = 64.0

#: ONNX opset written by ``kface export``.
DEFAULT_OPSET = 17


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(workers: int = 0, *, cores: int | None = None) -> int:
    """``--workers``: the number given, or for 0 one per core (``cores``, default
    :func:`available_cores`), at least one and at most :data:`MAX_AUTO_WORKERS`.

    The one place where kface decides how many workers to start: data stages (``--workers``),
    per-photo threads (:mod:`kface_cli.parallel`) and training's DataLoader all ask it.
    """
    if workers > 0:
        return workers
    return max(1, min(MAX_AUTO_WORKERS, available_cores() if cores is None else cores))


#: ``kface clean``: the default cut of each flagging rule, in degrees. ``--rule angle``: the angle
#: to the identity's dominant sub-center: 75, the authors' (insightface
#: recognition/subcenter_arcface: drop.py's ``--threshold`` defaults to 75 and the README drops
#: "high-confident noisy data (``>75 degrees``)"); ``--rule margin`` (the default): how much
#: nearer another identity's dominant sub-center is.
CLEAN_ANGLE_DEG = 75.0
CLEAN_MARGIN_DEG = 12.0
#: ``kface clean``: flagged faces shown on the contact sheet (the most suspect first).
CLEAN_SHEET_MAX = 30
