"""The training loop, read top to bottom (nanoGPT style): :func:`train` -> :func:`_train`.

    _setup          data (identity folders or train.rec) -> backbone (iresnet / MobileFaceNet)
                    -> margin head (ArcFace family, Partial FC) -> optimizer, lr schedule, loader
    _restore        with --resume: weights, optimizer, schedule, RNG states, position
    per epoch:
      _train_epoch  batches -> embeddings -> loss -> SGD/AdamW step -> lr step
      _end_epoch    BatchNorm recalibration, verification on val pairs, backbone.pth (best),
                    backbone_last.pth, the epoch's record
      _save_checkpoint, log, plots

The loop itself never reads a value back from the accelerator inside an epoch, except every
``log_every`` steps and at its end, where the per-step losses (kept on the device) are read back
and checked: a non-finite one stops the run, and the checkpoint on disk is the last good one.
Two waits remain, in torch: with ``--precision fp16``, ``GradScaler.step`` reads the
found-an-overflow flag every step (it must know whether to skip the step); with
``--sample-rate`` < 1, Partial FC's ``torch.unique`` of the batch labels (kface_cli.models.heads)
learns its output size on the host every step. fp32/bf16 at sample rate 1 has neither. Under torchrun
the ranks agree on a Ctrl-C at those same points. The loader is built once (persistent workers,
prefetching, pinned memory); the worker count follows the machine's cores unless ``--workers``.

Reproducibility: every epoch's sample order and flips come from ``(seed, epoch)`` alone, and each
item's ``--augment`` draws from ``(seed, epoch, item index)`` alone (whichever data worker reads
it); the RNG states are saved with each checkpoint, so ``--resume`` continues *exactly* (the same
weights as an uninterrupted run, also after a Ctrl-C in the middle of an epoch, with or without
data workers and augmentation; tests/test_train.py checks the backbone digests). BatchNorm
recalibration reads the stored faces, never augmented ones.

Distributed (``torchrun``): every rank builds the same model, the backbone is wrapped in
DistributedDataParallel, the head's class centres are sharded across ranks (Partial FC), each
rank reads its own slice of every global batch, and rank 0 validates and writes the files.
DDP keeps ``broadcast_buffers=True`` and full-precision gradients (insightface: False and fp16
compression): every rank then holds the same BatchNorm statistics and the run equals one process
(tests/test_distributed.py); see the README's training notes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli import console
from kface_cli.dataset.provenance import TRAINING_DATA_KEY, training_data
from kface_cli.embedding.embedder import state_dict_digest
from kface_cli.errors import InputError, KFaceError, ModelMismatchError, TrainingError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed
from kface_cli.train.config import AUTO, TrainConfig, config_from_dict, resolve_config, save_config_json

#: Options that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = ("epochs", "workers", "device", "log_every", "val_batch_size", "val_pairs")
VAL_FAR = 1e-2  # TAR is reported at this FAR after every epoch
#: Validation needs at least this many same-person and as many different-person pairs: two of
#: each in every fold of the 10-fold accuracy. Fewer measure nothing (10 pairs: "70.00% +- 45.83%")
#: and would pick the "best" epoch by chance.
MIN_VAL_PAIRS_EACH = 20
PLOT_EVERY_S = 30.0  # redraw plots.png at most this often (and after the last epoch)
SCALER_GROWTH_INTERVAL = 100  # fp16 GradScaler: steps without overflow before the scale doubles (insightface)
PREFETCH_BATCHES = 4  # batches each loader worker prepares ahead
MAX_AUTO_WORKERS = 8  # more rarely helps: a 112x112 JPEG decodes in well under a millisecond
CPU_CORES_PER_WORKER = 4  # on a CPU device the cores train; loader workers get a quarter of them
CPU_WORKER_NICE = 10  # on a CPU device loader workers yield to the training threads (see auto_workers)


@dataclass
class TrainResult:
    """What a run produced (also in ``runs/<name>/``)."""

    run_dir: Path
    network: str
    num_classes: int
    num_images: int
    epochs: int  # completed epochs
    best_epoch: int | None
    best_accuracy: float | None
    last: dict[str, Any] = field(default_factory=dict)  # the last epoch's record
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    samples_per_s: float = 0.0
    world_size: int = 1
    device: str = "cpu"


# ------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------


def train_from_options(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *, resume: bool = False
) -> TrainResult:
    """What ``kface train`` calls: build the config (file < command line) and train.

    With ``resume`` the run's saved config is used; only :data:`RESUMABLE_CHANGES` may be
    overridden (e.g. more ``--epochs``), anything else is ignored with a warning.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not resume:
        return train(resolve_config(config_file, overrides))
    from kface_cli.workspace import Workspace

    asked = resolve_config(config_file, overrides)
    if asked.name is None:
        raise KFaceError(
            "--resume needs --name: which run to continue", hint="Run folders are in runs/ of the workspace."
        )
    run_dir = Workspace.resolve(asked.workdir).run(asked.name)
    ckpt_path = run_dir / ck.RUN_CHECKPOINT
    try:
        saved = config_from_dict(ck.load_checkpoint(ckpt_path)["config"])
        saved.replace(name=asked.name).validate()
    except (KFaceError, TypeError, ValueError) as e:
        if isinstance(e, InputError) and str(ckpt_path) in str(e):
            raise
        raise InputError(
            f"{ckpt_path}: its saved training config is damaged ({getattr(e, 'message', str(e))[:200]})",
            hint="Start a new run (without --resume), or restore the run folder from a copy.",
        ) from None
    given = {k.replace("-", "_") for k in overrides} | (
        set(asked.to_dict()) - {"name", "workdir"} if config_file else set()
    )
    changes = {k: getattr(asked, k) for k in given if k in RESUMABLE_CHANGES}
    ignored = sorted(
        k for k in given - set(RESUMABLE_CHANGES) - {"name", "workdir"} if getattr(asked, k) != getattr(saved, k)
    )
    if ignored:
        console.warn(f"--resume keeps the run's own settings; ignoring: {', '.join(ignored)}")
    # the run is the one --name names (a copied run folder continues the copy), never the
    # name stored in its checkpoint
    return train(saved.replace(workdir=asked.workdir, name=asked.name, **changes).validate(), resume=True)


def train(
    config: TrainConfig, *, resume: bool = False, on_step: Callable[[int, int], None] | None = None
) -> TrainResult:
    """Train a backbone + margin head as ``config`` says; returns a :class:`TrainResult`.

    ``on_step(epoch, step_in_epoch)`` is called after every optimizer step (tests use it to
    simulate Ctrl-C by raising KeyboardInterrupt). ``resume``: continue run ``config.name`` from
    its checkpoint (use :func:`train_from_options` to get the saved config).
    """
    info = distributed.setup(config.device)
    quiet_before = console.MODE.quiet
    if not info.is_main:
        console.set_mode(quiet=True)  # one progress bar, from rank 0
    try:
        return _train(config, info, resume, on_step)
    finally:
        console.set_mode(quiet=quiet_before)
        distributed.cleanup(info)


# ------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, epoch)
# ------------------------------------------------------------------------------------------


def steps_per_epoch(num_images: int, batch_size: int, world_size: int, max_steps: int = 0) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as insightface does)."""
    steps = num_images // (batch_size * world_size)
    return min(steps, max_steps) if max_steps > 0 else steps


class EpochBatches:
    """Batch sampler: rank ``rank``'s share of every global batch of epoch ``epoch``, as lists of
    ``(index, flip, (seed, epoch))`` (the last: the key of the item's augmentation). Global batch
    k = permutation[k*B*W : (k+1)*B*W]; rank r takes its r-th slice of B, so W processes with
    batch B see the same global batches as one with B*W."""

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        start_step: int = 0,
        max_steps: int = 0,
    ):
        self.num_images, self.seed, self.flip = num_images, seed, flip
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.steps = steps_per_epoch(num_images, batch_size, world_size, max_steps)
        self.set_epoch(epoch, start_step)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Move to ``epoch`` (from step ``start_step``): the loader and its workers stay as they are."""
        import torch

        self.epoch = epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.order = torch.randperm(self.num_images, generator=g).numpy()  # (N,)
        self.flips = (
            (torch.rand(self.num_images, generator=g) < 0.5).numpy()
            if self.flip
            else np.zeros(self.num_images, dtype=bool)
        )
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, bool, tuple[int, int]]]]:
        B, W = self.batch_size, self.world_size
        key = (self.seed, self.epoch)
        for step in range(self.start_step, self.steps):
            lo = step * B * W + self.rank * B
            yield [(int(self.order[i]), bool(self.flips[i]), key) for i in range(lo, lo + B)]


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def _default_network(device: Any) -> str:
    return "r50" if device.type == "cuda" else "mbf_small"


def _auto_batch_size(device: Any, num_images: int, world_size: int) -> int:
    """128 on a GPU, 32 on a CPU; at most a quarter of the data per global batch (>= 2 for BatchNorm)."""
    preferred = 128 if device.type == "cuda" else 32
    return max(2, min(preferred, num_images // (4 * world_size)))


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(device: Any, world_size: int = 1, cores: int | None = None) -> int:
    """DataLoader workers per process when ``--workers`` is not given, from the machine's cores.

    The rule: loading must overlap the step, never wait for it and never slow it.

    * On a GPU the cores only feed the device: every core but the training process's own
      (at most :data:`MAX_AUTO_WORKERS`).
    * On a CPU the cores run the network, and one worker decodes far faster than the network
      consumes (a 112x112 JPEG: ~0.25 ms; mbf trains ~12 samples per CPU second): a quarter of
      the cores, and **at least one** even on 2 cores. With 0 the step waits for every batch to
      be decoded (issue 24 reported mbf on 2 loaded cores at 11.5 samples/s with 0 workers and
      23.3 with 1; interleaved runs on the shared machine could not separate the two: see
      docs/performance.md, `bench_train_defaults.py --also-workers 0`). The workers run at a lower
      priority (:data:`CPU_WORKER_NICE`), so that they fill the gaps of the training threads
      instead of pre-empting them; their work is small (~5 ms a batch of 32, one thread).
    """
    per_process = max(1, (cores or available_cores()) // max(1, world_size))
    if device.type == "cpu":
        return max(1, per_process // CPU_CORES_PER_WORKER)
    return max(1, min(MAX_AUTO_WORKERS, per_process - 1))


def _read_init(path: str, network: str | None = None) -> tuple[dict[str, Any], Path]:
    """``--init`` weights: insightface backbone.pth, our backbone.pth, a run folder or checkpoint.pt;
    or an ONNX model (a file, or a fetched pack's name) whose weights map exactly onto a kface
    backbone (:mod:`kface_cli.embedding.onnx_import`)."""
    from kface_cli.embedding.loading import load_torch_weights

    p = Path(path).expanduser()
    if not p.exists():
        from kface_cli.hub.cache import resolve_pack

        pack = resolve_pack(path) if len(p.parts) == 1 else None
        if pack is None:
            raise KFaceError(
                f"--init weights not found: {p}",
                hint="Pass an insightface backbone.pth, a kface run folder, an .onnx model or a fetched pack's name.",
            )
        p = pack
    if p.is_file() and p.suffix.lower() == ".onnx":
        from kface_cli.embedding.onnx_import import onnx_to_weights

        weights = onnx_to_weights(p, network)
        console.info(f"--init {path}: {p.name} mapped onto kface's {weights.network} (embeddings checked)")
        return weights.state_dict, weights.source
    weights = load_torch_weights(p)  # weights_only; strips module./_orig_mod. prefixes
    return weights.state_dict, weights.source


def _apply_init(backbone: Any, sd: dict[str, Any], p: Path) -> None:
    """Load ``--init`` weights strictly; a mismatch names the network the file is for."""
    from kface_cli.models.registry import infer_network

    want = backbone.state_dict()
    if set(sd) != set(want) or any(tuple(sd[k].shape) != tuple(want[k].shape) for k in want):
        try:
            other = infer_network(sd)
            hint = f"These are {other} weights: pass --network {other} (and the matching --embedding-size)."
        except KFaceError:
            hint = "Check --network and --embedding-size."
        raise ModelMismatchError(f"--init {p} does not fit the configured backbone", hint=hint)
    backbone.load_state_dict(sd, strict=True)


def _freeze(backbone: Any, n_stages: int) -> list[Any]:
    """Freeze the first ``n_stages`` stages (stem = 1); returns the frozen modules (kept in eval)."""
    stages = list(backbone.stages)
    if n_stages > len(stages):
        raise KFaceError(f"--freeze {n_stages}: this network has {len(stages)} stages", hint=f"Use 0..{len(stages)}.")
    frozen = stages[:n_stages]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad = False
    return frozen


def _resolve_val_pairs(config: TrainConfig, ws: Any) -> Path | None:
    if config.val_pairs is not None:
        if config.val_pairs.strip().lower() == "none":
            return None
        p = Path(config.val_pairs).expanduser()
        if not p.is_file():
            raise KFaceError(
                f"validation pairs not found: {p}",
                hint="Pass --val-pairs FILE.csv, or --val-pairs none to train without.",
            )
        return p
    return ws.val_pairs if ws.val_pairs.is_file() else None


def too_few_val_pairs(pairs: Sequence[Any]) -> str | None:
    """Why ``pairs`` are too few to validate on (:data:`MIN_VAL_PAIRS_EACH`), or None."""
    same = sum(1 for p in pairs if p.same)
    different = len(pairs) - same
    if min(same, different) >= MIN_VAL_PAIRS_EACH:
        return None
    return (
        f"{same} same-person and {different} different-person pairs; validation needs at least "
        f"{MIN_VAL_PAIRS_EACH} of each (2 per fold of the 10-fold accuracy)"
    )


def validate(backbone: Any, pair_faces: Any, *, network: str, batch_size: int = 64) -> dict[str, Any]:
    """Verification on prepared val pairs (flip TTA, as insightface): 10-fold accuracy, threshold,
    TAR at FAR 1e-2, AUC, EER. Uses the same embedder and metrics as ``kface evaluate``."""
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.metrics import far_key, verification_metrics
    from kface_cli.embedding.photos import embed_pairs

    embedder = embedder_from_module(ck.unwrap(backbone), flip=True, network=network, backend="torch")
    try:
        dist, issame = embed_pairs(embedder, pair_faces, batch_size=batch_size)
    except InputError as e:  # NaN or zero embeddings: the weights went bad although the loss did not
        raise TrainingError(
            f"validation stopped the run: {e.message}",
            hint="The last good checkpoint is kept; resume with a lower --lr, or train with --precision fp32.",
        ) from None
    m = verification_metrics(dist, issame, fars=(VAL_FAR,))
    tar = m["tar_at_far"].get(far_key(VAL_FAR)) or {}
    return {
        "accuracy": m.get("accuracy"),
        "accuracy_std": m.get("accuracy_std"),
        "threshold": m.get("threshold"),
        "tar": tar.get("tar"),  # at FAR "far"
        "far": VAL_FAR,
        "auc": m.get("auc"),
        "eer": m.get("eer"),
        "n_pairs": m.get("n_pairs"),
    }


def recalibrate_batchnorm(
    backbone: Any, dataset: Any, *, num_images: int, batch_size: int, device: Any, seed: int, frozen: list[Any] = ()
) -> None:
    """Re-estimate BatchNorm running statistics with the current weights ("precise BN").

    Running statistics lag the weights (momentum 0.1) and start from mean 0 / variance 1, which
    is far from the truth of a freshly initialised MobileFaceNet (its depthwise layers shrink
    activations); in a short run eval-mode embeddings then collapse and validation says nothing.
    This resets them and averages ``num_images`` training images (fixed ones, no flips, no grad).
    Training itself never reads running statistics, so the optimisation is unchanged; frozen
    stages keep their loaded statistics.
    """
    import torch

    skip = {id(m) for f in frozen for m in f.modules()}
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in skip]
    n = min(num_images, len(dataset))
    if not bns or n < 2:
        return
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()[:n]
    momenta = [m.momentum for m in bns]
    was_training = backbone.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        backbone.train()
        for f in frozen:
            f.eval()
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                idx = order[lo : lo + batch_size]
                if len(idx) < 2:
                    break
                x = torch.stack([dataset[(i, False)][0] for i in idx]).to(device)  # (b, 3, 112, 112)
                backbone(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        backbone.train(was_training)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the training process (which stops cleanly, see
    :class:`_StopFlag`); otherwise they would die and take the run down without a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cpu_worker_init(worker_id: int) -> None:
    """A loader worker of a run on the CPU: as :func:`_ignore_sigint`, at a lower priority
    (:data:`CPU_WORKER_NICE`): it decodes in the gaps of the training threads."""
    _ignore_sigint(worker_id)
    try:
        os.nice(CPU_WORKER_NICE)
    except (AttributeError, OSError):  # Windows; or a limit: loading still overlaps the step
        pass


class _StopFlag:
    """Ctrl-C during training sets a flag; the loop stops after the current step, at a consistent
    point, and leaves a checkpoint. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        console.warn("Ctrl-C: stopping after this step and saving a checkpoint (press again to abort at once)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ------------------------------------------------------------------------------------------
# The run, top to bottom: set-up -> restore -> (one epoch -> end of epoch -> checkpoint) x epochs
# ------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one run holds: built by :func:`_setup`, advanced by the loop in :func:`_train`."""

    config: TrainConfig
    info: distributed.DistInfo
    run_dir: Path
    dataset: Any
    num_classes: int
    steps: int  # optimizer steps per epoch
    backbone: Any
    model: Any  # the backbone, or DistributedDataParallel around it
    head: Any
    frozen: list[Any]
    optimizer: Any
    scheduler: Any
    scaler: Any
    sampler: EpochBatches
    loader: Any
    workers: int
    lr: float
    data_source: str
    pair_faces: Any = None
    val_path: Path | None = None
    validating: bool = False  # rank 0 validates after each epoch (the same on every rank)
    log: Any = None  # log.jsonl, open on rank 0
    created_dir: bool = False  # this run made its folder (a failure before its first checkpoint removes it)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "accuracy": None})
    epoch: int = 0  # position: completed epochs ...
    step_in_epoch: int = 0  # ... + steps of the current one (what a checkpoint records)
    start_epoch: int = 0
    start_step: int = 0
    losses: list[float] = field(default_factory=list)  # this epoch's per-step losses, read back so far
    window: Any = None  # (log_every,) losses still on the device
    pending: int = 0  # how many of ``window`` are not read back yet
    samples_seen: int = 0
    epoch_samples_per_s: float = 0.0
    t_start: float = 0.0
    t_train: float = 0.0
    last_plot: float = -math.inf

    @property
    def device(self) -> Any:
        return self.info.device

    def write_log(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(console.to_json(record, indent=None) + "\n")
            self.log.flush()


def _train(
    config: TrainConfig, info: distributed.DistInfo, resume: bool, on_step: Callable[[int, int], None] | None
) -> TrainResult:
    run = _setup(config, info, resume)
    stopped_cleanly = False
    try:
        with _StopFlag() as stop:
            for epoch in range(run.start_epoch, run.config.epochs):
                stopped_cleanly = _train_epoch(run, epoch, stop, on_step)
                if stopped_cleanly:
                    raise KeyboardInterrupt
                record = _end_epoch(run, epoch)
                _save_checkpoint(run)
                run.write_log(record)
                _maybe_plot(run, final=epoch + 1 == run.config.epochs)
        _check_ranks_agree(run)
    except KeyboardInterrupt:
        _save_interrupted(run, stopped_cleanly)
        raise
    except BaseException:
        _discard_unstarted(run)
        raise
    finally:
        if run.log is not None:
            run.log.close()
    return _result(run)


def _discard_unstarted(run: _Run) -> None:
    """A new run that failed before its first checkpoint leaves no folder behind (its name stays free)."""
    if not (run.info.is_main and run.created_dir) or (run.run_dir / ck.RUN_CHECKPOINT).exists():
        return
    if run.log is not None:
        run.log.close()
        run.log = None
    shutil.rmtree(run.run_dir, ignore_errors=True)


def _setup(config: TrainConfig, info: distributed.DistInfo, resume: bool) -> _Run:
    """Run folder, seeds, data, model, optimizer, schedule, loader, validation pairs, config.json;
    with ``resume`` the checkpoint's state (:func:`_restore`)."""
    import torch

    from kface_cli.models.heads import build_head
    from kface_cli.models.registry import (
        DEFAULT_EMBEDDING_SIZE,
        canonical_name,
        get_backbone,
        infer_embedding_size,
        infer_network,
    )
    from kface_cli.train.datasets import SYNTHETIC_PREFIX, open_training_data
    from kface_cli.workspace import Workspace

    t_start = time.perf_counter()
    device = info.device
    ws = Workspace.resolve(config.workdir)

    # -- run folder ------------------------------------------------------------------------
    name = config.name or distributed.broadcast_object(info, f"{config.network}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = ws.run(name)
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = ck.load_checkpoint(run_dir / ck.RUN_CHECKPOINT)
    elif (run_dir / ck.RUN_CHECKPOINT).exists():
        raise KFaceError(
            f"run {name!r} already exists ({run_dir})", hint="Continue it with --resume, or choose another --name."
        )

    # -- seeds -------------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels

    # -- data --------------------------------------------------------------------------------
    if config.data and config.data.startswith(SYNTHETIC_PREFIX):
        data_path: Any = config.data  # random in-memory data (throughput checks)
    else:
        data_path = (
            Path(config.data).expanduser() if config.data else ws.require(ws.train_dir, "training data", "kface split")
        )
    dataset = open_training_data(data_path, flip=False, augment=config.augment, resize=config.resize_images)
    # "auto" resolved (on a folder of faces: FOLDER_DEFAULT): config.json says what was used
    config = config.replace(augment=dataset.augment.spec() if dataset.augment else "none")
    num_images, num_classes = len(dataset), dataset.num_classes

    # -- model: "auto" values follow --init, the device and the data -----------------------
    init = (
        _read_init(config.init, None if config.network == AUTO else config.network)
        if config.init and ckpt is None
        else None
    )
    if config.network != AUTO:
        network = canonical_name(config.network)
    elif init is not None:
        network = infer_network(init[0])
    else:
        network = _default_network(device)
    embedding_size = config.embedding_size or (
        infer_embedding_size(init[0]) if init is not None else DEFAULT_EMBEDDING_SIZE
    )
    batch_size = config.batch_size or _auto_batch_size(device, num_images, info.world_size)
    config = config.replace(network=network, name=name, embedding_size=embedding_size, batch_size=batch_size)
    steps = steps_per_epoch(num_images, config.batch_size, info.world_size, config.max_steps_per_epoch)
    if steps == 0:
        raise TrainingError(
            f"the global batch ({config.batch_size} x {info.world_size} processes) is larger than the data ({num_images} images)",
            hint="Lower --batch-size.",
        )
    lowp = config.precision != "fp32"
    backbone = get_backbone(
        network,
        config.embedding_size,
        fp16=lowp,
        autocast_dtype="bfloat16" if config.precision == "bf16" else "float16",
    )
    if init is not None:
        _apply_init(backbone, *init)
    frozen = _freeze(backbone, config.freeze)
    head = build_head(num_classes, config.embedding_size, config.head_config())
    backbone.to(device)
    head.to(device)
    if config.channels_last:
        backbone.to(memory_format=torch.channels_last)

    lr = config.base_lr(info.world_size)
    optimizer, scheduler, scaler = _build_optimizer(config, backbone, head, lr=lr, steps=steps, device=device)
    sampler, loader, workers = _build_loader(config, info, dataset)

    run = _Run(
        config=config,
        info=info,
        run_dir=run_dir,
        dataset=dataset,
        num_classes=num_classes,
        steps=steps,
        backbone=backbone,
        model=backbone,
        head=head,
        frozen=frozen,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
        loader=loader,
        workers=workers,
        lr=lr,
        data_source=str(getattr(dataset, "source", data_path)),
        window=torch.zeros(config.log_every, device=device),
        t_start=t_start,
    )
    if ckpt is not None:
        _restore(run, ckpt)
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.model = DDP(backbone, device_ids=[device.index] if device.type == "cuda" else None)

    # -- validation pairs (rank 0) -----------------------------------------------------------
    run.val_path = _resolve_val_pairs(config, ws)
    if info.is_main:
        if run.val_path is None:
            console.warn(
                "no validation pairs (split/val_pairs.csv or --val-pairs): training without validation; backbone.pth will be the last epoch"
            )
        else:
            from kface_cli.embedding.photos import prepare_pairs
            from kface_cli.formats.pairs import read_pairs_csv

            pairs = read_pairs_csv(run.val_path)
            too_few = too_few_val_pairs(pairs)
            if too_few:
                console.warn(
                    f"{run.val_path}: {too_few}: too small to measure anything; training without validation, "
                    "backbone.pth will be the last epoch. Make a larger val part (`kface split --val-ids`)."
                )
            else:
                run.pair_faces = prepare_pairs(pairs, description="Loading val pairs")

    run.validating = bool(distributed.broadcast_object(info, run.pair_faces is not None))

    # -- files ---------------------------------------------------------------------------------
    if info.is_main:
        from kface_cli.atomic import ensure_dir

        run.created_dir = not run_dir.exists()
        ensure_dir(run_dir)
        try:
            save_config_json(
                run_dir / ck.RUN_CONFIG,
                config,
                num_classes=num_classes,
                num_images=num_images,
                world_size=info.world_size,
                data_source=run.data_source,
                **{TRAINING_DATA_KEY: training_data(str(data_path), getattr(dataset, "classes", []), init=config.init)},
                val_pairs_file=str(run.val_path) if run.val_path else None,
                steps_per_epoch=steps,
                base_lr=lr,
                device=str(device),
                loader_workers=workers,
            )
            console.info(
                f"Training {network} ({config.loss}) on {num_images} images of {num_classes} identities -> {run_dir}"
                f" [{info.world_size} x {device}, {steps} steps/epoch, lr {lr:g}, {workers} data workers]"
            )
            run.log = open(run_dir / ck.RUN_LOG, "a", encoding="utf-8")
        except BaseException:
            _discard_unstarted(run)
            raise
    run.t_train = time.perf_counter()
    return run


def _build_optimizer(config: TrainConfig, backbone: Any, head: Any, *, lr: float, steps: int, device: Any):
    """SGD or AdamW over (backbone, head), the per-iteration lr schedule and the fp16 GradScaler."""
    import torch

    from kface_cli.train.schedule import poly_scheduler

    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}, {"params": list(head.parameters())}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay)
    scheduler = poly_scheduler(optimizer, steps * config.epochs, int(round(config.warmup_epochs * steps)))
    scaler = torch.amp.GradScaler(
        device.type, growth_interval=SCALER_GROWTH_INTERVAL, enabled=config.precision == "fp16"
    )
    return optimizer, scheduler, scaler


def _collate_channels_last(items: list[tuple[Any, int]]) -> tuple[Any, Any]:
    """The default collation's batch, made channels_last in the loader worker (one thread, idle
    between batches) instead of the training step, where the copy was most of the main thread's
    own work per step (4.4 of 5.9 ms for a batch of 32 on 2 cores; 1.25 ms without it)."""
    import torch

    # numpy, one thread: torch.stack on small tensors in a process with several torch threads
    # cost ~90 ms a batch in the thread pool (with --workers 0 that is the training process)
    first = items[0][0]
    nhwc = np.empty((len(items), first.shape[1], first.shape[2], first.shape[0]), dtype=np.float32)
    for i, (x, _) in enumerate(items):
        nhwc[i] = x.numpy().transpose(1, 2, 0)  # (H, W, 3): channels_last memory
    x = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # (B, 3, H, W) with channels_last strides, no copy
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


def _build_loader(config: TrainConfig, info: distributed.DistInfo, dataset: Any):
    """The one DataLoader of the run: its workers live across epochs (the sampler moves instead)."""
    import torch

    sampler = EpochBatches(
        len(dataset),
        config.batch_size,
        seed=config.seed,
        epoch=0,
        rank=info.rank,
        world_size=info.world_size,
        flip=config.flip,
        max_steps=config.max_steps_per_epoch,
    )
    workers = config.workers if config.workers is not None else auto_workers(info.device, info.world_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",  # page-locked batches: asynchronous host-to-device copies
        persistent_workers=workers > 0,
        collate_fn=_collate_channels_last if config.channels_last else None,
        prefetch_factor=PREFETCH_BATCHES if workers else None,
        worker_init_fn=(_cpu_worker_init if info.device.type == "cpu" else _ignore_sigint) if workers else None,
    )
    return sampler, loader, workers


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, scaler, RNG states, position."""
    try:
        _restore_state(run, ckpt)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:  # shapes or fields that do not fit
        path = run.run_dir / ck.RUN_CHECKPOINT
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{path} does not fit this run ({detail})",
            hint="The checkpoint is damaged or comes from another run; start a new run without --resume.",
        ) from None
    # the scheduler's lr_lambdas are rebuilt from the (possibly longer) epochs
    run.scheduler.base_lrs = [run.lr for _ in run.scheduler.base_lrs]
    if run.start_epoch >= run.config.epochs:
        raise KFaceError(
            f"run {run.config.name!r} already finished {run.start_epoch} epochs",
            hint="Pass a larger --epochs to train further.",
        )
    console.info(f"Resuming {run.config.name} at epoch {run.start_epoch + 1}, step {run.start_step} of {run.steps}")


def _restore_state(run: _Run, ckpt: dict[str, Any]) -> None:
    if ckpt["num_classes"] != run.num_classes:
        raise ModelMismatchError(
            f"the data now has {run.num_classes} classes, the run was trained on {ckpt['num_classes']}",
            hint="Resume with the same --data.",
        )
    run.backbone.load_state_dict(ckpt["backbone"])
    run.head.load_full_state_dict(ckpt["head"])
    run.optimizer.load_state_dict(_local_optimizer_state(ckpt["optimizer"], run.head))
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
    run.epoch, run.step_in_epoch = run.start_epoch, run.start_step
    run.history, run.best = list(ckpt["history"]), dict(ckpt["best"])
    run.losses = list(ckpt.get("partial_losses", []))
    rngs = ckpt["rng"]
    if len(rngs) == run.info.world_size:
        ck.restore_rng(rngs[run.info.rank], run.device)
    else:
        console.warn(
            f"checkpoint was written by {len(rngs)} processes, now {run.info.world_size}: random states restart"
        )


def _train_epoch(run: _Run, epoch: int, stop: _StopFlag, on_step: Callable[[int, int], None] | None) -> bool:
    """One epoch of optimizer steps. Nothing here waits for the device except :func:`_read_losses`,
    every ``log_every`` steps and at the end. True when every rank agreed to stop (Ctrl-C)."""
    import torch

    cfg, info, device = run.config, run.info, run.device
    first = run.start_step if epoch == run.start_epoch else 0
    if first == 0:
        run.losses = []
    run.sampler.set_epoch(epoch, first)
    run.model.train()
    for m in run.frozen:
        m.eval()  # frozen BatchNorm statistics stay as loaded
    clipped = [p for p in run.backbone.parameters() if p.requires_grad]  # backbone only, as insightface
    global_batch = cfg.batch_size * info.world_size
    t_epoch, n_epoch = time.perf_counter(), 0
    with console.progress(f"Epoch {epoch + 1}/{cfg.epochs}", total=len(run.sampler)) as bar:
        for step, (x, y) in enumerate(run.loader, start=first):
            x = x.to(device, non_blocking=True)  # (B, 3, 112, 112)
            y = y.to(device, non_blocking=True)  # (B,)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)  # already so from the loader: no copy
            loss = run.head(run.model(x), y)  # () global-batch mean
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            run.window[run.pending] = loss.detach()  # stays on the device
            run.pending += 1
            run.epoch, run.step_in_epoch = epoch, step + 1
            n_epoch += global_batch
            run.samples_seen += global_batch
            bar.advance()
            global_step = epoch * run.steps + step + 1
            if global_step % cfg.log_every == 0 or step + 1 == run.steps:
                _read_losses(run)
                rate = n_epoch / max(time.perf_counter() - t_epoch, 1e-9)
                lr = run.scheduler.get_last_lr()[0]
                bar.update(loss=run.losses[-1], lr=lr, samples_s=round(rate, 1))
                if global_step % cfg.log_every == 0:
                    run.write_log(
                        {
                            "type": "step",
                            "epoch": epoch + 1,
                            "step": global_step,
                            "loss": float(np.mean(run.losses[-cfg.log_every :])),
                            "lr": lr,
                            "samples_per_s": rate,
                            "time": time.time(),
                        }
                    )
                if info.distributed and _agree(info, stop.stop):  # ranks agree where they sync anyway
                    return True
            if on_step is not None:
                on_step(epoch, step + 1)
            if not info.distributed and stop.stop:
                return True
    run.epoch_samples_per_s = n_epoch / max(time.perf_counter() - t_epoch, 1e-9)
    return False


def _read_losses(run: _Run) -> None:
    """Bring the pending step losses to the host (the one wait for the device) and stop on a
    non-finite one: the checkpoint on disk is then the last good one."""
    values = run.window[: run.pending].tolist()
    first = run.step_in_epoch - run.pending
    run.pending = 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            kept = (
                "the last good checkpoint is kept"
                if (run.run_dir / ck.RUN_CHECKPOINT).exists()
                else "no checkpoint was written yet"
            )
            step = first + i + 1
            run.write_log(
                {"type": "stopped", "reason": "non-finite loss", "epoch": run.epoch + 1, "step": step, "loss": v}
            )
            raise TrainingError(
                f"loss became {v} at epoch {run.epoch + 1}, step {step}: training stopped ({kept} in {run.run_dir})",
                hint="Lower --lr, add --warmup-epochs, or use --precision fp32.",
            )
    run.losses.extend(values)


def _end_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Validate, keep the best backbone (the later epoch on ties) and the last one; the epoch's record."""
    cfg, info = run.config, run.info
    record: dict[str, Any] = {
        "type": "epoch",
        "epoch": epoch + 1,
        "loss": float(np.mean(run.losses)) if run.losses else None,
        "lr": run.scheduler.get_last_lr()[0],
        "samples_per_s": run.epoch_samples_per_s,
        "elapsed_s": time.perf_counter() - run.t_start,
    }
    if cfg.bn_recalibration and (run.validating or epoch + 1 == cfg.epochs):
        # every rank (``validating`` is rank 0's, broadcast), same images, no augmentation:
        # the BatchNorm buffers stay identical across ranks
        recalibrate_batchnorm(
            run.backbone,
            run.dataset,
            num_images=cfg.bn_recalibration,
            batch_size=cfg.batch_size,
            device=run.device,
            seed=cfg.seed,
            frozen=run.frozen,
        )
    improved = True
    if info.is_main and run.pair_faces is not None:
        val = validate(run.model, run.pair_faces, network=cfg.network, batch_size=cfg.val_batch_size)
        record["val"] = val
        acc, best_acc = val["accuracy"], run.best["accuracy"]
        # a tie: the later, more trained epoch; no accuracy at all: the last epoch (never no backbone.pth)
        improved = best_acc is None if acc is None else (best_acc is None or acc >= best_acc)
        console.info(
            f"epoch {epoch + 1}: loss {_num(record['loss'])}, val accuracy {_pct(acc)} +- {_pct(val['accuracy_std'])}, "
            f"threshold {_num(val['threshold'])}, TAR@FAR=1e-2 {_pct(val['tar'])}" + ("  (best)" if improved else "")
        )
    elif info.is_main:
        console.info(f"epoch {epoch + 1}: loss {_num(record['loss'])}")
    improved = bool(distributed.broadcast_object(info, improved))
    if info.is_main:
        weights = ck.backbone_state_dict(run.backbone)
        ck.save_torch(run.run_dir / ck.RUN_LAST_BACKBONE, weights)
        if improved:
            ck.save_torch(run.run_dir / ck.RUN_BACKBONE, weights)
    if improved:
        run.best = {"epoch": epoch + 1, "accuracy": (record.get("val") or {}).get("accuracy")}
        run.best = distributed.broadcast_object(info, run.best)
    record["best"] = improved
    run.history.append(record)
    run.losses = []
    run.epoch, run.step_in_epoch = epoch + 1, 0
    return record


def _save_checkpoint(run: _Run) -> None:
    """checkpoint.pt at the current position. Every rank takes part (the head and its optimizer
    state are gathered); rank 0 writes."""
    payload = {
        "format": ck.CHECKPOINT_FORMAT,
        "config": run.config.to_dict(),
        "network": run.config.network,
        "embedding_size": run.config.embedding_size,
        "num_classes": run.num_classes,
        "backbone": ck.backbone_state_dict(run.backbone),
        "head": {k: v.cpu() for k, v in run.head.full_state_dict().items()},
        "optimizer": _full_optimizer_state(run.optimizer, run.head),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch,
        "global_step": run.epoch * run.steps + run.step_in_epoch,
        "rng": distributed.all_gather_object(run.info, ck.capture_rng(run.device)),
        "best": run.best,
        "history": run.history,
        "partial_losses": list(run.losses) if run.step_in_epoch else [],
    }
    if run.info.is_main:
        ck.save_torch(run.run_dir / ck.RUN_CHECKPOINT, payload)


def _save_interrupted(run: _Run, stopped_cleanly: bool) -> None:
    """Ctrl-C: a checkpoint at the current step. Single process: always safe. Under torchrun only
    when every rank agreed to stop at this step (the checkpoint gathers the head from all ranks)."""
    if run.info.distributed and not stopped_cleanly:
        if run.info.is_main:
            console.warn("interrupted: the checkpoint of the last completed epoch is kept")
        return
    _read_losses(run)  # a non-finite loss among them: no checkpoint, the last good one stays
    _save_checkpoint(run)
    if run.info.is_main:
        run.write_log(
            {"type": "stopped", "reason": "interrupted", "epoch": run.epoch, "step_in_epoch": run.step_in_epoch}
        )
        console.warn(
            f"interrupted: checkpoint saved at epoch {run.epoch} + {run.step_in_epoch} steps; continue with "
            f"`kface train --name {run.config.name} --resume`"
        )


def _check_ranks_agree(run: _Run) -> None:
    """DDP sanity check: every rank must end with the same backbone."""
    digests = distributed.all_gather_object(run.info, state_dict_digest(ck.backbone_state_dict(run.backbone)))
    if run.info.is_main:
        run.write_log(
            {"type": "end", "epochs": len(run.history), "backbone_digest_per_rank": digests, "time": time.time()}
        )
        if len(set(digests)) > 1:
            console.warn(f"ranks ended with different backbone weights: {digests}")


def _maybe_plot(run: _Run, final: bool) -> None:
    if run.info.is_main and (final or time.perf_counter() - run.last_plot > PLOT_EVERY_S):
        _plot(run.run_dir)
        run.last_plot = time.perf_counter()


def _result(run: _Run) -> TrainResult:
    return TrainResult(
        run_dir=run.run_dir,
        network=run.config.network,
        num_classes=run.num_classes,
        num_images=len(run.dataset),
        epochs=len(run.history),
        best_epoch=run.best["epoch"],
        best_accuracy=run.best["accuracy"],
        last=run.history[-1] if run.history else {},
        history=run.history,
        elapsed_s=time.perf_counter() - run.t_start,
        samples_per_s=run.samples_seen / max(time.perf_counter() - run.t_train, 1e-9),
        world_size=run.info.world_size,
        device=str(run.device),
    )


def _plot(run_dir: Path) -> None:
    """Redraw plots.png; a missing or broken matplotlib never stops training."""
    try:
        from kface_cli.train.plots import write_plots

        write_plots(run_dir)
    except Exception as e:  # noqa: BLE001 - plots are a convenience
        console.warn(f"could not draw {run_dir / ck.RUN_PLOTS}: {e}")


def _agree(info: distributed.DistInfo, flag: bool) -> bool:
    """True on every rank when any rank saw Ctrl-C (so all stop at the same step)."""
    if not info.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def _head_param_ids(state: dict[str, Any]) -> list[int]:
    return list(state["param_groups"][1]["params"])


def _full_optimizer_state(optimizer: Any, head: Any) -> dict[str, Any]:
    """The optimizer's state_dict with the head's per-class states gathered from every rank."""
    sd = optimizer.state_dict()
    state = {}
    head_ids = set(_head_param_ids(sd))
    for pid, st in sd["state"].items():
        st = dict(st)
        if pid in head_ids:
            for k, v in st.items():
                if hasattr(v, "dim") and v.dim() > 0:
                    st[k] = head.gather_rows(v)
        state[pid] = {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in st.items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _local_optimizer_state(full: dict[str, Any], head: Any) -> dict[str, Any]:
    head_ids = set(_head_param_ids(full))
    state = {}
    for pid, st in full["state"].items():
        st = dict(st)
        if pid in head_ids:
            for k, v in st.items():
                if hasattr(v, "dim") and v.dim() > 0:
                    st[k] = head.local_rows(v)
        state[pid] = st
    return {"state": state, "param_groups": full["param_groups"]}


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``runs/<name>/log.jsonl`` (unreadable lines are skipped)."""
    path = Path(run_dir) / ck.RUN_LOG
    out: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
