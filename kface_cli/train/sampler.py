"""Which images each optimizer step sees: epochs of seeded, sharded batches (``EpochBatches``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass


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
