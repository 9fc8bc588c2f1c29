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

#: Parallel workers of a data stage when ``--workers 0`` (one per CPU core, at most this many).
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
#: Faces per forward pass in ``kface evaluate`` and ``kface identify``.
EMBED_BATCH_SIZE = 64

#: ONNX opset written by ``kface export``.
DEFAULT_OPSET = 17


def auto_workers(workers: int) -> int:
    """``--workers``: the number given, or for 0 one per CPU core, at most :data:`MAX_AUTO_WORKERS`."""
    return workers if workers > 0 else min(MAX_AUTO_WORKERS, os.cpu_count() or 1)


#: ``kface clean``: the default cut of each flagging rule, in degrees. ``--rule angle``: the angle
#: to the identity's dominant sub-center: 75, the authors' (insightface
#: recognition/subcenter_arcface: drop.py's ``--threshold`` defaults to 75 and the README drops
#: "high-confident noisy data (``>75 degrees``)"); ``--rule margin`` (the default): how much
#: nearer another identity's dominant sub-center is.
CLEAN_ANGLE_DEG = 75.0
CLEAN_MARGIN_DEG = 12.0
#: ``kface clean``: flagged faces shown on the contact sheet (the most suspect first).
CLEAN_SHEET_MAX = 30
