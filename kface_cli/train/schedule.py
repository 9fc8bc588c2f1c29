"""Learning-rate schedule: linear warm-up, then polynomial (power 1) decay, stepped per iteration.

insightface's ``PolyScheduler``: during warm-up ``lr = base * step / warmup_steps``; after it
``lr = base * (1 - (step - warmup) / (total - warmup)) ** power``, reaching 0 at ``total``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

POWER = 1.0


def lr_factor(step: int, total_steps: int, warmup_steps: int, power: float = POWER) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based)."""
    assert total_steps > 0 and 0 <= warmup_steps <= total_steps, (
        f"bad schedule: total {total_steps}, warmup {warmup_steps}"
    )
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps == warmup_steps:
        return 1.0
    return max(0.0, 1.0 - (step - warmup_steps) / (total_steps - warmup_steps)) ** power


def poly_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR with :func:`lr_factor`; call ``.step()`` after every optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup_steps))
