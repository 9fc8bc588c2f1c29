"""One epoch of optimizer steps: batches -> embeddings -> loss -> step, the losses read back
every ``log_every`` steps, and Ctrl-C agreed between ranks."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli import console
from kface_cli.errors import TrainingError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed

if TYPE_CHECKING:  # pragma: no cover
    from kface_cli.train.state import Run

    pass


class StopFlag:
    """Ctrl-C during training sets a flag; the loop stops after the current step, at a consistent
    point, and leaves a checkpoint. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
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


def train_epoch(run: Run, epoch: int, stop: StopFlag, on_step: Callable[[int, int], None] | None) -> bool:
    """One epoch of optimizer steps. Nothing here waits for the device except :func:`read_losses`,
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
                read_losses(run)
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


def read_losses(run: Run) -> None:
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


def _agree(info: distributed.DistInfo, flag: bool) -> bool:
    """True on every rank when any rank saw Ctrl-C (so all stop at the same step)."""
    if not info.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
