"""Run-folder files: atomic saves, checkpoints that refuse what is not ours, RNG capture, plain state_dicts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kface_cli.errors import InputError
from kface_cli.train import checkpoint as ck


def test_save_is_atomic_and_loads_back(tmp_path, monkeypatch):
    path = tmp_path / ck.RUN_CHECKPOINT
    ck.save_torch(path, {"format": ck.CHECKPOINT_FORMAT, "epoch": 3, "w": torch.arange(4.0)})
    got = ck.load_checkpoint(path)
    assert got["epoch"] == 3 and torch.equal(got["w"], torch.arange(4.0))

    def crash(obj, f):  # the disk fills up half-way through a second save
        f.write(b"partial")  # torch.save writes through the file object it is given
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ck.save_torch(path, {"format": ck.CHECKPOINT_FORMAT, "epoch": 4})
    assert ck.load_checkpoint(path)["epoch"] == 3  # the saved one is untouched
    assert [p.name for p in tmp_path.iterdir()] == [ck.RUN_CHECKPOINT]  # no temporary file left


def test_missing_foreign_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ck.load_checkpoint(tmp_path / "none.pt")
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a kface checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="cannot read"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    state = ck.capture_rng()
    ck.save_torch(tmp_path / "rng.pt", {"format": ck.CHECKPOINT_FORMAT, "rng": state})
    first = (torch.rand(3), np.random.rand(3), random.random())
    ck.restore_rng(ck.load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_backbone_state_dict_is_plain_and_detached():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = torch.nn.Module()
    wrapped.module = net  # what DistributedDataParallel looks like from outside
    sd = ck.backbone_state_dict(wrapped)
    assert set(sd) == {"0.weight", "0.bias"}  # no "module." prefix
    sd["0.weight"].zero_()
    assert net[0].weight.abs().sum() > 0  # a copy, not the live parameters
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)  # how kface trains by default
    assert not conv.weight.is_contiguous()
    assert ck.backbone_state_dict(conv)["weight"].is_contiguous()  # saved in the usual layout
