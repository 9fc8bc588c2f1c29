"""What a run holds (``Run``) and how it is saved and restored: checkpoints (every rank's
optimizer state gathered), the interrupted-run save, ``--resume``, the log."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kface_cli import console
from kface_cli.errors import InputError, KFaceError, ModelMismatchError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed
from kface_cli.train.config import TrainConfig
from kface_cli.train.sampler import EpochBatches
from kface_cli.train.step import read_losses

if TYPE_CHECKING:  # pragma: no cover
    import torch

    pass


@dataclass
class Run:
    """What one run holds: built by :func:`setup`, advanced by the loop in :func:`_train`."""

    config: TrainConfig
    info: distributed.DistInfo
    run_dir: Path
    dataset: Any
    num_classes: int
    steps: int  # optimizer steps per epoch
    backbone: torch.nn.Module
    model: torch.nn.Module  # the backbone, or DistributedDataParallel around it
    head: torch.nn.Module
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


def discard_unstarted(run: Run) -> None:
    """A new run that failed before its first checkpoint leaves no folder behind (its name stays free)."""
    if not (run.info.is_main and run.created_dir) or (run.run_dir / ck.RUN_CHECKPOINT).exists():
        return
    if run.log is not None:
        run.log.close()
        run.log = None
    shutil.rmtree(run.run_dir, ignore_errors=True)


def restore(run: Run, ckpt: dict[str, Any]) -> None:
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


def _restore_state(run: Run, ckpt: dict[str, Any]) -> None:
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


def save_checkpoint(run: Run) -> None:
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


def save_interrupted(run: Run, stopped_cleanly: bool) -> None:
    """Ctrl-C: a checkpoint at the current step. Single process: always safe. Under torchrun only
    when every rank agreed to stop at this step (the checkpoint gathers the head from all ranks)."""
    if run.info.distributed and not stopped_cleanly:
        if run.info.is_main:
            console.warn("interrupted: the checkpoint of the last completed epoch is kept")
        return
    read_losses(run)  # a non-finite loss among them: no checkpoint, the last good one stays
    save_checkpoint(run)
    if run.info.is_main:
        run.write_log(
            {"type": "stopped", "reason": "interrupted", "epoch": run.epoch, "step_in_epoch": run.step_in_epoch}
        )
        console.warn(
            f"interrupted: checkpoint saved at epoch {run.epoch} + {run.step_in_epoch} steps; continue with "
            f"`kface train --name {run.config.name} --resume`"
        )


def _head_param_ids(state: dict[str, Any]) -> list[int]:
    return list(state["param_groups"][1]["params"])


def _full_optimizer_state(optimizer: Any, head: torch.nn.Module) -> dict[str, Any]:
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


def _local_optimizer_state(full: dict[str, Any], head: torch.nn.Module) -> dict[str, Any]:
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
