"""The training loop, read top to bottom (nanoGPT style): :func:`train` -> :func:`_train`.

    setup           (train/setup.py) data (identity folders or train.rec) -> backbone (iresnet /
                    MobileFaceNet) -> margin head (ArcFace family, Partial FC) -> optimizer, lr
                    schedule, loader (train/sampler.py: the epochs' batches), validation pairs
    restore         (train/state.py) with --resume: weights, optimizer, schedule, RNG states, position
    per epoch:
      train_epoch   (train/step.py) batches -> embeddings -> loss -> SGD/AdamW step -> lr step
      _end_epoch    BatchNorm recalibration and verification on val pairs (train/validation.py),
                    backbone.pth (best), backbone_last.pth, the epoch's record
      save_checkpoint (train/state.py), log, plots

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
(tests/test_distributed.py); see docs/train.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli import console
from kface_cli.embedding.embedder import state_dict_digest
from kface_cli.errors import InputError, KFaceError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed
from kface_cli.train.config import TrainConfig, config_from_dict, resolve_config
from kface_cli.train.setup import setup
from kface_cli.train.state import Run, discard_unstarted, save_checkpoint, save_interrupted
from kface_cli.train.step import StopFlag, train_epoch
from kface_cli.train.validation import recalibrate_batchnorm, validate

if TYPE_CHECKING:  # pragma: no cover
    pass

#: Options that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = ("epochs", "workers", "device", "log_every", "val_batch_size", "val_pairs")
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
    ended = False
    try:
        result = _train(config, info, resume, on_step)
        ended = True
        return result
    finally:
        console.set_mode(quiet=quiet_before)
        distributed.cleanup(info, drain=ended)


# ------------------------------------------------------------------------------------------
# The run, top to bottom: set-up -> restore -> (one epoch -> end of epoch -> checkpoint) x epochs
# ------------------------------------------------------------------------------------------


def _train(
    config: TrainConfig, info: distributed.DistInfo, resume: bool, on_step: Callable[[int, int], None] | None
) -> TrainResult:
    run = setup(config, info, resume)
    stopped_cleanly = False
    try:
        with StopFlag() as stop:
            for epoch in range(run.start_epoch, run.config.epochs):
                stopped_cleanly = train_epoch(run, epoch, stop, on_step)
                if stopped_cleanly:
                    raise KeyboardInterrupt
                record = _end_epoch(run, epoch)
                save_checkpoint(run)
                run.write_log(record)
                _maybe_plot(run, final=epoch + 1 == run.config.epochs)
        _check_ranks_agree(run)
    except KeyboardInterrupt:
        save_interrupted(run, stopped_cleanly)
        raise
    except BaseException:
        discard_unstarted(run)
        raise
    finally:
        if run.log is not None:
            run.log.close()
    return _result(run)


def _end_epoch(run: Run, epoch: int) -> dict[str, Any]:
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


def _check_ranks_agree(run: Run) -> None:
    """DDP sanity check: every rank must end with the same backbone."""
    digests = distributed.all_gather_object(run.info, state_dict_digest(ck.backbone_state_dict(run.backbone)))
    if run.info.is_main:
        run.write_log(
            {"type": "end", "epochs": len(run.history), "backbone_digest_per_rank": digests, "time": time.time()}
        )
        if len(set(digests)) > 1:
            console.warn(f"ranks ended with different backbone weights: {digests}")


def _maybe_plot(run: Run, final: bool) -> None:
    if run.info.is_main and (final or time.perf_counter() - run.last_plot > PLOT_EVERY_S):
        _plot(run.run_dir)
        run.last_plot = time.perf_counter()


def _result(run: Run) -> TrainResult:
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


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"
