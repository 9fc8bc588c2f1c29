"""The learning-rate schedule: linear warm-up, then linear decay to 0, per iteration (insightface's PolyScheduler)."""

from __future__ import annotations

import pytest
import torch

from kface_cli.train.schedule import lr_factor, poly_scheduler


def test_warmup_then_linear_decay():
    assert [lr_factor(s, 10, 2) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor(0, 5, 0) == 1.0 and lr_factor(4, 5, 0) == pytest.approx(0.2)
    assert lr_factor(3, 3, 3) == 1.0  # all warm-up: full lr at the end
    assert lr_factor(12, 10, 2) == 0.0  # past the end (more --epochs on resume): never negative
    with pytest.raises(AssertionError):
        lr_factor(0, 10, 11)


def test_scheduler_steps_the_optimizer_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = poly_scheduler(opt, total_steps=8, warmup_steps=2)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.4 * lr_factor(s, 8, 2) for s in range(8)])
    assert lrs[:3] == pytest.approx([0.0, 0.2, 0.4]) and opt.param_groups[0]["lr"] == 0.0
