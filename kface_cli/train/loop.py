"""The training loop: read it top to bottom (nanoGPT style), one function, :func:`train`.

    data (identity folders or train.rec) -> backbone (iresnet / MobileFaceNet) -> embeddings
    -> margin head (ArcFace family, Partial FC) -> loss -> SGD/AdamW step -> lr schedule
    after each epoch: verification on val pairs, checkpoint, best backbone.pth, log, plots

Reproducibility: every epoch's sample order and flips come from ``(seed, epoch)`` alone, and the
RNG states are saved with each checkpoint, so ``--resume`` continues *exactly* (the same weights
as an uninterrupted run, also after a Ctrl-C in the middle of an epoch).

Distributed (``torchrun``): every rank builds the same model, the backbone is wrapped in
DistributedDataParallel, the head's class centres are sharded across ranks (Partial FC), each
rank reads its own slice of every global batch, and rank 0 validates and writes the files.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli import console
from kface_cli.embedding.embedder import state_dict_digest
from kface_cli.errors import KFaceError, ModelMismatchError, TrainingError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed
from kface_cli.train.config import AUTO, TrainConfig, config_from_dict, resolve_config, save_config_json

#: Options that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = ("epochs", "workers", "device", "log_every", "val_batch_size", "val_pairs")
VAL_FAR = 1e-2  # TAR is reported at this FAR after every epoch
PLOT_EVERY_S = 30.0  # redraw plots.png at most this often (and after the last epoch)


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
    saved = config_from_dict(ck.load_checkpoint(run_dir / ck.RUN_CHECKPOINT)["config"])
    given = {k.replace("-", "_") for k in overrides} | (
        set(asked.to_dict()) - {"name", "workdir"} if config_file else set()
    )
    changes = {k: getattr(asked, k) for k in given if k in RESUMABLE_CHANGES}
    ignored = sorted(
        k for k in given - set(RESUMABLE_CHANGES) - {"name", "workdir"} if getattr(asked, k) != getattr(saved, k)
    )
    if ignored:
        console.warn(f"--resume keeps the run's own settings; ignoring: {', '.join(ignored)}")
    return train(saved.replace(workdir=asked.workdir, **changes).validate(), resume=True)


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
    ``(index, flip)``. Global batch k = permutation[k*B*W : (k+1)*B*W]; rank r takes its r-th
    slice of B, so W processes with batch B see the same global batches as one with B*W."""

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
        import torch

        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.order = torch.randperm(num_images, generator=g).numpy()  # (N,)
        self.flips = (torch.rand(num_images, generator=g) < 0.5).numpy() if flip else np.zeros(num_images, dtype=bool)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.steps = steps_per_epoch(num_images, batch_size, world_size, max_steps)
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        B, W = self.batch_size, self.world_size
        for step in range(self.start_step, self.steps):
            lo = step * B * W + self.rank * B
            yield [(int(self.order[i]), bool(self.flips[i])) for i in range(lo, lo + B)]


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def _default_network(device: Any) -> str:
    return "r50" if device.type == "cuda" else "mbf_small"


def _auto_batch_size(device: Any, num_images: int, world_size: int) -> int:
    """128 on a GPU, 32 on a CPU; at most a quarter of the data per global batch (>= 2 for BatchNorm)."""
    preferred = 128 if device.type == "cuda" else 32
    return max(2, min(preferred, num_images // (4 * world_size)))


def _read_init(path: str) -> tuple[dict[str, Any], Path]:
    """``--init`` weights: insightface backbone.pth, our backbone.pth, a run folder or checkpoint.pt."""
    from kface_cli.embedding.loading import load_torch_weights

    p = Path(path).expanduser()
    if not p.exists():
        raise KFaceError(
            f"--init weights not found: {p}", hint="Pass an insightface backbone.pth or a kface run folder."
        )
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


def validate(backbone: Any, pair_faces: Any, *, network: str, batch_size: int = 64) -> dict[str, Any]:
    """Verification on prepared val pairs (flip TTA, as insightface): 10-fold accuracy, threshold,
    TAR at FAR 1e-2, AUC, EER. Uses the same embedder and metrics as ``kface evaluate``."""
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.evaluate.metrics import far_key, verification_metrics
    from kface_cli.evaluate.protocols import embed_pairs

    embedder = embedder_from_module(ck.unwrap(backbone), flip=True, network=network, backend="torch")
    dist, issame = embed_pairs(embedder, pair_faces, batch_size=batch_size)
    m = verification_metrics(dist, issame, fars=(VAL_FAR,))
    tar = m["tar_at_far"].get(far_key(VAL_FAR)) or {}
    return {
        "accuracy": m.get("accuracy"),
        "accuracy_std": m.get("accuracy_std"),
        "threshold": m.get("threshold"),
        "tar_at_far_1e-2": tar.get("tar"),
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


def _train(
    config: TrainConfig, info: distributed.DistInfo, resume: bool, on_step: Callable[[int, int], None] | None
) -> TrainResult:
    import torch

    from kface_cli.models.heads import build_head
    from kface_cli.models.registry import (
        DEFAULT_EMBEDDING_SIZE,
        canonical_name,
        get_backbone,
        infer_embedding_size,
        infer_network,
    )
    from kface_cli.train.datasets import open_training_data
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
    import random

    random.seed(config.seed)

    # -- data --------------------------------------------------------------------------------
    if config.data and config.data.startswith("synthetic:"):
        data_path: Any = config.data  # random in-memory data (throughput checks)
    else:
        data_path = (
            Path(config.data).expanduser() if config.data else ws.require(ws.train_dir, "training data", "kface split")
        )
    dataset = open_training_data(data_path, flip=False, augment=config.augment)
    num_images, num_classes = len(dataset), dataset.num_classes

    # -- model: "auto" values follow --init, the device and the data -----------------------
    init = _read_init(config.init) if config.init and ckpt is None else None
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
    backbone_params = [p for p in backbone.parameters() if p.requires_grad]

    # -- optimiser and schedule ---------------------------------------------------------------
    from kface_cli.train.schedule import poly_scheduler

    lr = config.base_lr(info.world_size)
    groups = [{"params": backbone_params}, {"params": list(head.parameters())}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay)
    total_steps = steps * config.epochs
    scheduler = poly_scheduler(optimizer, total_steps, int(round(config.warmup_epochs * steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    # -- resume ------------------------------------------------------------------------------
    start_epoch, start_step = 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "accuracy": None}
    if ckpt is not None:
        if ckpt["num_classes"] != num_classes:
            raise ModelMismatchError(
                f"the data now has {num_classes} classes, the run was trained on {ckpt['num_classes']}",
                hint="Resume with the same --data.",
            )
        backbone.load_state_dict(ckpt["backbone"])
        head.load_full_state_dict(ckpt["head"])
        optimizer.load_state_dict(_local_optimizer_state(ckpt["optimizer"], head))
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        history, best = list(ckpt["history"]), dict(ckpt["best"])
        rngs = ckpt["rng"]
        if len(rngs) == info.world_size:
            ck.restore_rng(rngs[info.rank], device)
        else:
            console.warn(
                f"checkpoint was written by {len(rngs)} processes, now {info.world_size}: random states restart"
            )
        # the scheduler's lr_lambdas are rebuilt from the (possibly longer) epochs
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
        if start_epoch >= config.epochs:
            raise KFaceError(
                f"run {name!r} already finished {start_epoch} epochs", hint="Pass a larger --epochs to train further."
            )
        console.info(f"Resuming {name} at epoch {start_epoch + 1}, step {start_step} of {steps}")

    model: Any = backbone
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(backbone, device_ids=[device.index] if device.type == "cuda" else None)

    # -- validation pairs (rank 0) -----------------------------------------------------------
    pair_faces = None
    val_path = _resolve_val_pairs(config, ws)
    if info.is_main:
        if val_path is None:
            console.warn(
                "no validation pairs (split/val_pairs.csv or --val-pairs): training without validation; backbone.pth will be the last epoch"
            )
        else:
            from kface_cli.evaluate.protocols import prepare_pairs
            from kface_cli.formats.pairs import read_pairs_csv

            pair_faces = prepare_pairs(read_pairs_csv(val_path), description="Loading val pairs")

    # -- files ---------------------------------------------------------------------------------
    extra = {
        "num_classes": num_classes,
        "num_images": num_images,
        "world_size": info.world_size,
        "data_source": str(getattr(dataset, "source", data_path)),
        "val_pairs_file": str(val_path) if val_path else None,
        "steps_per_epoch": steps,
        "base_lr": lr,
        "device": str(device),
    }
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config_json(run_dir / ck.RUN_CONFIG, config, **extra)
        console.info(
            f"Training {network} ({config.loss}) on {num_images} images of {num_classes} identities -> {run_dir}"
            f" [{info.world_size} x {device}, {steps} steps/epoch, lr {lr:g}]"
        )
    log = open(run_dir / ck.RUN_LOG, "a", encoding="utf-8") if info.is_main else None

    def write_log(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(console.to_json(record, indent=None) + "\n")
            log.flush()

    def save_checkpoint(epoch_done: int, step_in_epoch: int) -> None:
        # every rank takes part (the head and its optimizer state are gathered); rank 0 writes
        payload = {
            "format": ck.CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "network": network,
            "embedding_size": config.embedding_size,
            "num_classes": num_classes,
            "backbone": ck.backbone_state_dict(backbone),
            "head": {k: v.cpu() for k, v in head.full_state_dict().items()},
            "optimizer": _full_optimizer_state(optimizer, head),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "epoch": epoch_done,
            "step_in_epoch": step_in_epoch,
            "global_step": epoch_done * steps + step_in_epoch,
            "rng": distributed.all_gather_object(info, ck.capture_rng(device)),
            "best": best,
            "history": history,
            "partial_losses": list(partial_losses) if step_in_epoch else [],
        }
        if info.is_main:
            ck.save_torch(run_dir / ck.RUN_CHECKPOINT, payload)

    # -- the loop ------------------------------------------------------------------------------
    global_step = start_epoch * steps + start_step
    samples_seen, t_train = 0, time.perf_counter()
    last_record: dict[str, Any] = history[-1] if history else {}
    cur_epoch, cur_step = start_epoch, start_step  # position for an interrupt checkpoint
    partial_losses: list[float] = list(ckpt.get("partial_losses", [])) if ckpt is not None else []
    stopped_cleanly = False
    losses: list[float] = []
    last_plot = -math.inf
    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                first = start_step if epoch == start_epoch else 0
                sampler = EpochBatches(
                    num_images,
                    config.batch_size,
                    seed=config.seed,
                    epoch=epoch,
                    rank=info.rank,
                    world_size=info.world_size,
                    flip=config.flip,
                    start_step=first,
                    max_steps=config.max_steps_per_epoch,
                )
                loader = torch.utils.data.DataLoader(
                    dataset,
                    batch_sampler=sampler,
                    num_workers=config.workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=False,
                    worker_init_fn=_ignore_sigint if config.workers else None,
                )
                model.train()
                for m in frozen:
                    m.eval()  # frozen BatchNorm statistics stay as loaded
                losses = list(partial_losses) if epoch == start_epoch else []
                t_epoch, n_epoch = time.perf_counter(), 0
                with console.progress(f"Epoch {epoch + 1}/{config.epochs}", total=len(sampler)) as bar:
                    for step, (x, y) in enumerate(loader, start=first):
                        x = x.to(device, non_blocking=True)  # (B, 3, 112, 112)
                        y = y.to(device, non_blocking=True)  # (B,)
                        if config.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        embeddings = model(x)  # (B, emb)
                        loss = head(embeddings, y)  # () global-batch mean
                        if not torch.isfinite(loss):
                            kept = (
                                "the last good checkpoint is kept"
                                if (run_dir / ck.RUN_CHECKPOINT).exists()
                                else "no checkpoint was written yet"
                            )
                            write_log(
                                {
                                    "type": "stopped",
                                    "reason": "non-finite loss",
                                    "epoch": epoch + 1,
                                    "step": step,
                                    "loss": loss.item(),
                                }
                            )
                            raise TrainingError(
                                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: training stopped ({kept} in {run_dir})",
                                hint="Lower --lr, add --warmup-epochs, or use --precision fp32.",
                            )
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(
                            backbone_params, config.grad_clip
                        )  # backbone only, as insightface
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        global_step += 1
                        n_epoch += config.batch_size * info.world_size
                        samples_seen += config.batch_size * info.world_size
                        losses.append(loss.item())
                        cur_step = step + 1
                        rate = n_epoch / max(time.perf_counter() - t_epoch, 1e-9)
                        bar.advance()
                        bar.update(loss=losses[-1], lr=scheduler.get_last_lr()[0], samples_s=round(rate, 1))
                        if global_step % config.log_every == 0:
                            write_log(
                                {
                                    "type": "step",
                                    "epoch": epoch + 1,
                                    "step": global_step,
                                    "loss": float(np.mean(losses[-config.log_every :])),
                                    "lr": scheduler.get_last_lr()[0],
                                    "samples_per_s": rate,
                                    "time": time.time(),
                                }
                            )
                        if on_step is not None:
                            on_step(epoch, step + 1)
                        if _agree(info, stop.stop):
                            stopped_cleanly = True
                            raise KeyboardInterrupt

                # -- end of epoch: validate, keep the best, checkpoint, log, plot ---------------
                record: dict[str, Any] = {
                    "type": "epoch",
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)) if losses else None,
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": n_epoch / max(time.perf_counter() - t_epoch, 1e-9),
                    "elapsed_s": time.perf_counter() - t_start,
                }
                improved = True
                if config.bn_recalibration and (pair_faces is not None or epoch + 1 == config.epochs):
                    # every rank, same images: BatchNorm buffers stay identical across ranks
                    recalibrate_batchnorm(
                        backbone,
                        dataset,
                        num_images=config.bn_recalibration,
                        batch_size=config.batch_size,
                        device=device,
                        seed=config.seed,
                        frozen=frozen,
                    )
                if info.is_main and pair_faces is not None:
                    val = validate(model, pair_faces, network=network, batch_size=config.val_batch_size)
                    record["val"] = val
                    acc = val["accuracy"]
                    improved = acc is not None and (best["accuracy"] is None or acc > best["accuracy"])
                    console.info(
                        f"epoch {epoch + 1}: loss {_num(record['loss'])}, val accuracy {_pct(acc)} +- {_pct(val['accuracy_std'])}, "
                        f"threshold {_num(val['threshold'])}, TAR@FAR=1e-2 {_pct(val['tar_at_far_1e-2'])}"
                        + ("  (best)" if improved else "")
                    )
                elif info.is_main:
                    console.info(f"epoch {epoch + 1}: loss {_num(record['loss'])}")
                improved = bool(distributed.broadcast_object(info, improved))
                if improved:
                    best = {"epoch": epoch + 1, "accuracy": (record.get("val") or {}).get("accuracy")}
                    best = distributed.broadcast_object(info, best)
                    if info.is_main:
                        ck.save_torch(run_dir / ck.RUN_BACKBONE, ck.backbone_state_dict(backbone))
                record["best"] = improved
                history.append(record)
                last_record = record
                losses = []
                save_checkpoint(epoch + 1, 0)
                cur_epoch, cur_step = epoch + 1, 0
                write_log(record)
                if info.is_main and (epoch + 1 == config.epochs or time.perf_counter() - last_plot > PLOT_EVERY_S):
                    _plot(run_dir)
                    last_plot = time.perf_counter()
        # -- DDP sanity check: every rank must end with the same backbone ----------------------
        digests = distributed.all_gather_object(info, state_dict_digest(ck.backbone_state_dict(backbone)))
        if info.is_main:
            write_log({"type": "end", "epochs": len(history), "backbone_digest_per_rank": digests, "time": time.time()})
            if len(set(digests)) > 1:
                console.warn(f"ranks ended with different backbone weights: {digests}")
    except KeyboardInterrupt:
        # Single process: always safe to save. Under torchrun only when every rank agreed to stop
        # at this step (the checkpoint gathers the head shards from all ranks).
        if not info.distributed or stopped_cleanly:
            partial_losses[:] = losses if cur_step > 0 else []
            save_checkpoint(cur_epoch, cur_step)
            if info.is_main:
                write_log({"type": "stopped", "reason": "interrupted", "epoch": cur_epoch, "step_in_epoch": cur_step})
                console.warn(
                    f"interrupted: checkpoint saved at epoch {cur_epoch} + {cur_step} steps; continue with "
                    f"`kface train --name {name} --resume`"
                )
        elif info.is_main:
            console.warn("interrupted: the checkpoint of the last completed epoch is kept")
        raise
    finally:
        if log is not None:
            log.close()

    elapsed = time.perf_counter() - t_start
    return TrainResult(
        run_dir=run_dir,
        network=network,
        num_classes=num_classes,
        num_images=num_images,
        epochs=len(history),
        best_epoch=best["epoch"],
        best_accuracy=best["accuracy"],
        last=last_record,
        history=history,
        elapsed_s=elapsed,
        samples_per_s=samples_seen / max(time.perf_counter() - t_train, 1e-9),
        world_size=info.world_size,
        device=str(device),
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
