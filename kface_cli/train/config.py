"""The training configuration: one frozen dataclass, from defaults < a TOML file < the command line.

Every field can be set in a TOML file (``kface train --config FILE.toml``; keys are the field
names, ``-`` or ``_``), and any option given on the command line overrides the file. Each field
is also a ``kface train`` option (``--batch-size`` for ``batch_size``): its type, default and help
(declared with :func:`_opt`) make the option, so a new field needs no edit in the CLI. The
resolved configuration (with "auto" values filled in) is saved as ``runs/<name>/config.json``
and inside every checkpoint; ``--resume`` rebuilds the run from it.

Shipped configs live in ``kface_cli/configs/`` and can be named without a path:
``kface train --config tutorial_r50`` (see :func:`shipped_configs`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from kface_cli.choices import Choice, Loss, Optimizer, Precision, check_seed
from kface_cli.errors import KFaceError

AUTO = "auto"
#: Sub-centres per class: a few is what sub-center ArcFace uses; more only multiplies the head.
MAX_SUBCENTERS = 100
GRAD_CLIP_NORM = 5.0  # insightface's clip norm
SGD_REFERENCE_LR, SGD_REFERENCE_BATCH = 0.1, 1024  # insightface: lr 0.1 for a global batch of 1024
ADAMW_DEFAULT_LR = 1e-3
SGD_MIN_AUTO_LR = 0.02  # the tutorial's fine-tuning lr; floor of the automatic sgd lr
MARGIN_M1_RANGE = (1.0, 4.0)  # multiplicative angular margin (SphereFace)
MARGIN_M2_RANGE = (0.0, 1.5)  # additive angular margin, radians (ArcFace)
MARGIN_M3_RANGE = (0.0, 1.0)  # additive cosine margin (CosFace)
#: (field, (lower bound, lower bound allowed?), upper bound) for the float options.
_FLOAT_RANGES = (
    ("scale", (0.0, False), 1024.0),
    ("lr", (0.0, False), 10.0),
    ("momentum", (0.0, True), 1.0),
    ("weight_decay", (0.0, True), 1.0),
    ("warmup_epochs", (0.0, True), 1e9),
    ("grad_clip", (0.0, False), 1e9),
    ("sample_rate", (0.0, False), 1.0),
)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _opt(default: Any, help: str, short: str | None = None, choices: type[Choice] | None = None) -> Any:
    """A TrainConfig field with its option help (``kface train --help`` is built from these);
    ``choices``: the :class:`Choice` enum whose values the option takes (listed in ``--help``)."""
    return dataclasses.field(default=default, metadata={"help": help, "short": short, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults follow insightface's arcface_torch."""

    # data ---------------------------------------------------------------------------------
    data: str | None = _opt(
        None,
        "Identity folders (ROOT/<id>/*.jpg), a folder with insightface train.rec/train.idx/property, "
        "or synthetic:<ids>x<images> [default: the workspace's split/train].",
    )
    val_pairs: str | None = _opt(
        None, "Validation pairs CSV, or 'none' [default: the workspace's split/val_pairs.csv when present]."
    )
    workers: int | None = _opt(
        None,
        "DataLoader worker processes, 0: load in the training process "
        "[default: from the cores: all but one on a GPU (at most 8), a quarter on a CPU].",
    )
    flip: bool = _opt(True, "Random horizontal flips.")
    resize_images: bool = _opt(
        False,
        "Resize training images of another size to 112x112 on purpose; they must already be aligned face crops "
        "(photos: run `kface crop` first). Without it such images are refused.",
    )
    # model --------------------------------------------------------------------------------
    network: str = _opt(
        AUTO,
        "Backbone: r18, r34, r50, r100, r200, mbf, mbf_small; auto: that of --init, else r50 on a GPU, mbf_small on a CPU.",
    )
    embedding_size: int | None = _opt(None, "Embedding size [default: that of --init, else 512].")
    init: str | None = _opt(
        None,
        "Start from these backbone weights (insightface backbone.pth, a kface run, or an ONNX model / fetched pack whose weights map exactly onto a kface backbone).",
    )
    freeze: int = _opt(0, "Keep the first N stages frozen (1 = the stem).")
    # loss ---------------------------------------------------------------------------------
    loss: str = _opt("arcface", "The loss (softmax family with margins).", choices=Loss)
    scale: float = _opt(64.0, "Logit scale s.")
    margin: tuple[float, ...] = _opt(
        (),
        "Margin: one value (ArcFace m, CosFace m, SphereFace m) or m1,m2,m3 for combined "
        "[default: the loss's own, e.g. 0.5].",
    )
    subcenters: int = _opt(1, "Sub-centres K per class (sub-center ArcFace; --loss subcenter: 3 unless set).")
    sample_rate: float = _opt(1.0, "Partial FC: fraction of negative class centres per step.")
    # optimisation -------------------------------------------------------------------------
    optimizer: str = _opt("sgd", "The optimizer.", choices=Optimizer)
    lr: float | None = _opt(
        None,
        f"Learning rate [default: {SGD_REFERENCE_LR:g} x global batch / {SGD_REFERENCE_BATCH} but at least "
        f"{SGD_MIN_AUTO_LR:g} for sgd, {ADAMW_DEFAULT_LR:g} for adamw].",
    )
    momentum: float = _opt(0.9, "SGD momentum.")
    weight_decay: float = _opt(5e-4, "Weight decay.")
    batch_size: int | None = _opt(
        None, "Images per step and process [default: 128 on a GPU, 32 on a CPU, at most a quarter of the data].", "-b"
    )
    epochs: int = _opt(20, "Epochs; with --resume, raise it to train further.", "-e")
    warmup_epochs: float = _opt(0.0, "Linear warm-up epochs before the polynomial decay (stepped per iteration).")
    grad_clip: float = _opt(GRAD_CLIP_NORM, "Clip the backbone's gradient norm at this value.")
    precision: str = _opt("fp32", "Arithmetic (fp16/bf16: the layers before fc under autocast).", choices=Precision)
    # run ----------------------------------------------------------------------------------
    device: str = _opt(AUTO, "auto, cpu, cuda, cuda:N.")
    seed: int = _opt(0, "Random seed.")
    name: str | None = _opt(None, "Run folder runs/<name> [default: <network>-<date>-<time>].")
    workdir: str | None = None  # workspace; None: $KFACE_WORKDIR or the current folder (the CLI's --workdir)
    log_every: int = _opt(10, "Steps between log lines (and between reads of the loss from the device).")
    val_batch_size: int = _opt(64, "Batch size of the validation after each epoch.")
    bn_recalibration: int = _opt(
        512, "Before validating, re-estimate BatchNorm statistics on this many training images (0: off)."
    )
    max_steps_per_epoch: int = _opt(
        0, "Cap on the steps per epoch, for smoke tests and benchmarks (0: the whole epoch)."
    )
    channels_last: bool = _opt(
        True, "NHWC memory format (measured faster on CPUs for mbf, r18, r50; what tensor-core convolutions read)."
    )
    # augmentation (kface_cli.train.augment) ----------------------------------------------
    augment: str = _opt(
        AUTO,
        "Training augmentations, e.g. jitter or jitter=0.05,colour=0.2 (landmark jitter, scale, shift, colour, blur, grey; see docs/evaluate.md); none: off, for exact comparisons [default: auto: jitter,scale,shift,colour on folders of faces, none on train.rec and synthetic: data].",
    )

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["margin"] = list(self.margin)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TrainConfig:
        """Raise :class:`KFaceError` for values that cannot work (listing the valid choices)."""
        from kface_cli.models.heads import check_loss

        self = self.replace(  # the choices validated and normalised ("ArcFace" -> "arcface")
            loss=check_loss(self.loss),
            optimizer=Optimizer.parse(self.optimizer, "optimizer").value,
            precision=Precision.parse(self.precision, "precision").value,
        )
        if self.network != AUTO:
            from kface_cli.models.registry import canonical_name

            canonical_name(self.network)
        for key in ("batch_size", "epochs", "embedding_size", "log_every", "val_batch_size", "subcenters"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise KFaceError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        for key in ("workers", "freeze", "max_steps_per_epoch", "bn_recalibration"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise KFaceError(f"--{key.replace('_', '-')} must not be negative, got {getattr(self, key)}")
        if self.subcenters is not None and self.subcenters > MAX_SUBCENTERS:
            raise KFaceError(f"--subcenters must be at most {MAX_SUBCENTERS}, got {self.subcenters}")
        check_seed(self.seed)
        if self.lr is not None and self.lr <= 0:
            raise KFaceError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.sample_rate <= 1:
            raise KFaceError(f"--sample-rate must be in (0, 1], got {self.sample_rate}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise KFaceError(
                f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), got {self.warmup_epochs}"
            )
        if self.name is not None and (
            not self.name or "/" in self.name or "\\" in self.name or self.name.startswith(".")
        ):
            raise KFaceError(f"--name {self.name!r} must be a plain folder name")
        for key, lo, hi in _FLOAT_RANGES:
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and lo[0] <= v and (v > lo[0] or lo[1]) and v <= hi):
                raise KFaceError(
                    f"--{key.replace('_', '-')} must be a finite number in {'[' if lo[1] else '('}{lo[0]:g}, {hi:g}], got {v}"
                )
        m1, m2, m3 = self.head_config().margins()  # margin count matches the loss
        for label, v, lo, hi in (
            ("m1", m1, *MARGIN_M1_RANGE),
            ("m2", m2, *MARGIN_M2_RANGE),
            ("m3", m3, *MARGIN_M3_RANGE),
        ):
            if not (math.isfinite(v) and lo <= v <= hi):
                raise KFaceError(f"--margin {label} must be a finite number in [{lo:g}, {hi:g}], got {v}")
        return self

    def head_config(self):
        from kface_cli.models.heads import HeadConfig

        return HeadConfig(
            loss=self.loss,
            scale=self.scale,
            margin=tuple(self.margin),
            subcenters=self.subcenters,
            sample_rate=self.sample_rate,
        )

    def base_lr(self, world_size: int = 1) -> float:
        """``lr``, or insightface's linear scaling rule for the global batch (lr 0.1 at 1024),
        floored at the tutorial's fine-tuning rate 0.02 (the rule is made for millions of images;
        K-Face-sized runs with small batches would barely move)."""
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer == "adamw":
            return ADAMW_DEFAULT_LR
        assert self.batch_size is not None, "batch_size is resolved before the learning rate"
        return max(SGD_REFERENCE_LR * self.batch_size * world_size / SGD_REFERENCE_BATCH, SGD_MIN_AUTO_LR)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check/convert one value against the field's type; errors name the key and the source."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise KFaceError(f"{source}: {key} cannot be empty")
    if isinstance(value, str) and optional and value.strip().lower() in ("", "null"):
        return None
    non_none = [a for a in args if a is not type(None)]
    base = non_none[0] if optional else hint
    try:
        if key == "margin":
            if isinstance(value, (int, float)):
                return (float(value),)
            if isinstance(value, str):
                return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
            return tuple(float(v) for v in value)
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        raise KFaceError(f"{source}: {key} = {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    return value


def normalise_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{"batch-size": 16}`` -> ``{"batch_size": 16}``; unknown keys raise, listing the valid ones."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = str(k).replace("-", "_")
        if key not in FIELDS:
            raise KFaceError(f"{source}: unknown option {k!r}", hint="Valid options: " + ", ".join(FIELDS) + ".")
        out[key] = _coerce(key, v, source)
    return out


def shipped_configs() -> dict[str, Path]:
    """Configs that ship with kface: name -> path (``kface train --config NAME``)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def find_config_file(spec: str | Path) -> Path:
    """A path, or the name of a shipped config."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs()
    if str(spec) in shipped:
        return shipped[str(spec)]
    raise KFaceError(
        f"config file not found: {spec}",
        hint="Pass a TOML file, or one of the shipped configs: " + ", ".join(shipped) + ".",
    )


def read_config_file(spec: str | Path) -> dict[str, Any]:
    """Options from a TOML file (a ``[train]`` table, or top-level keys)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib

    path = find_config_file(spec)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise KFaceError(f"{path} is not UTF-8 text (byte {e.start}): not a TOML config", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise KFaceError(f"{path} is not valid TOML: {e}", path=path) from None
    if "train" in data and isinstance(data["train"], dict):
        data = data["train"]
    return normalise_keys(data, str(path))


def resolve_config(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < ``config_file`` < ``overrides`` (only the options the user gave), validated."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    if overrides:
        values.update(normalise_keys({k: v for k, v in overrides.items() if v is not None}, "command line"))
    return TrainConfig(**values).validate()


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (extra keys are ignored)."""
    return TrainConfig(**normalise_keys({k: v for k, v in d.items() if k in FIELDS}, "saved config"))


def save_config_json(path: str | Path, config: TrainConfig, **extra: Any) -> None:
    """``config.json``: the resolved config plus derived facts (num_classes, world size...)."""
    from kface_cli.atomic import write_text

    write_text(path, json.dumps({**config.to_dict(), **extra}, indent=2) + "\n")
