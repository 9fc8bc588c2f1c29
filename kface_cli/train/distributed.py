"""Process-group setup for ``torchrun``: DDP with NCCL on GPUs and gloo on CPUs.

``torchrun --nproc_per_node N -m kface_cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them training runs in one process.
Nothing happens at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kface_cli.errors import KFaceError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0):
    """``auto`` -> cuda:<local_rank> when available, else cpu; explicit specs are checked."""
    import torch

    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise KFaceError(f"unknown device {spec!r}", hint="Use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KFaceError(f"--device {spec}: CUDA is not available on this machine", hint="Use --device cpu.")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a single-process DistInfo."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device_spec))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup(info: DistInfo, *, drain: bool = True) -> None:
    """Leave the process group. ``drain`` (after a run that ended normally on every rank): a
    barrier first, so that gloo's worker threads have released the last collectives' tensors
    before this process exits. DistributedDataParallel keeps the process group and its threads
    alive until the interpreter shuts down; a worker thread that releases a tensor Python also
    held needs the GIL, and one that asks for it during shutdown aborts the process ("terminate
    called without an active exception", SIGABRT: seen once in a few dozen runs of two CPU ranks
    on 2 busy cores). A rank that stops with an error skips the barrier: its peers may never reach it."""
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        if drain:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.distributed:
        dist.barrier()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
