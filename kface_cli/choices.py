"""Every option value with a fixed set of choices (``--mode align|box``, ``--index auto|flat|...``).

The one way kface validates a choice: a :class:`Choice` is a ``str`` Enum. The CLI declares its
options with these types, so ``--help`` lists the values and the command line is checked before a
command runs; domain functions, called from Python with plain strings, call :meth:`Choice.parse`,
which accepts any case or raises :class:`~kface_cli.errors.InputError` listing the valid choices
(never a silent fallback). Members compare equal to their values (``CropMode.BOX == "box"``).

This module imports nothing heavy: ``kface --help`` needs it.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from kface_cli.errors import InputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    def __str__(self) -> str:  # "box", not "CropMode.BOX", in messages and f-strings
        return self.value

    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(k.value for k in cls)

    @classmethod
    def parse(cls: type[C], value: str | C, what: str) -> C:
        """``value`` as a member of this Enum; ``what`` names the option in the error message."""
        try:
            return cls(str(getattr(value, "value", value)).strip().lower())
        except ValueError:
            raise InputError(f"unknown {what} {value!r}", hint=f"Use one of {', '.join(cls.values())}.") from None


# ---- output ---------------------------------------------------------------------------------
class OutputFormat(Choice):
    """``--format``: how a command prints its results (JSON follows the schema in README.md)."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    TSV = "tsv"


# ---- data stages ---------------------------------------------------------------------------
class GridPreset(Choice):
    """``kface sample-data --grid``: the images generated per identity."""

    TUTORIAL = "tutorial"
    SAMPLE = "sample"
    FULL = "full"


class CropMode(Choice):
    """``kface crop --mode``: ArcFace 5-point alignment, or the tutorial's face-box crop."""

    ALIGN = "align"
    BOX = "box"


class SplitPart(Choice):
    """``kface evaluate --split``: the workspace split part to report on."""

    VAL = "val"
    TEST = "test"


class SplitOrder(Choice):
    """``kface split --order``: draw the validation identities at random, or take the last ones."""

    RANDOM = "random"
    SORTED = "sorted"


# ---- training ------------------------------------------------------------------------------
class Loss(Choice):
    ARCFACE = "arcface"
    COSFACE = "cosface"
    SPHEREFACE = "sphereface"
    COMBINED = "combined"
    SUBCENTER = "subcenter"
    SOFTMAX = "softmax"
    NORMSOFTMAX = "normsoftmax"


class Optimizer(Choice):
    SGD = "sgd"
    ADAMW = "adamw"


class Precision(Choice):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


# ---- models and faces ----------------------------------------------------------------------
class ExportFormat(Choice):
    """``kface export --format``."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


class Backend(Choice):
    """What runs an embedder: torch, ONNX Runtime, or the faster of the two for the model."""

    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"


class LandmarkMode(Choice):
    """Where the 5 face points come from: the K-Face annotation (.txt beside the image) when there
    is one, else the detector (``auto``); the detector only; the annotation only. ``sidecar`` is
    the annotation's former name, still accepted."""

    AUTO = "auto"
    DETECT = "detect"
    ANNOTATION = "annotation"

    @classmethod
    def _missing_(cls, value: object) -> LandmarkMode | None:
        return cls.ANNOTATION if value == "annotation" else None


# ---- gallery -------------------------------------------------------------------------------
class PerIdentity(Choice):
    """Templates kept per person: every photo's (``all``), or one mean of them (``mean``)."""

    ALL = "all"
    MEAN = "mean"


class IndexKind(Choice):
    """The gallery's search index."""

    AUTO = "auto"
    FLAT = "flat"
    IVF = "ivf"
    HNSW = "hnsw"


# ---- research ------------------------------------------------------------------------------
class CleanRule(Choice):
    """``kface clean --rule``: which angle flags a training image (see kface_cli.research.clean)."""

    MARGIN = "margin"  # nearer another identity's dominant sub-center than its own, by more than the threshold
    ANGLE = "angle"  # farther than the threshold from its own identity's dominant sub-center (the paper's)


#: Seeds are what numpy's generators and ``torch.manual_seed`` both accept: 0 ... 2**32 - 1.
MAX_SEED = 2**32 - 1


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed`` when it is a whole number in [0, :data:`MAX_SEED`]; else one line naming ``option``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{option} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return seed
