"""Run-folder files: atomic saves, checkpoints that refuse what is not ours, RNG capture, plain state_dicts."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from kface_cli.errors import InputError
from kface_cli.train import checkpoint as ck


def _complete(**fields):
    """A checkpoint with every field kface writes (small values), then ``fields``."""
    base = {
        "format": ck.CHECKPOINT_FORMAT, "config": {"network": "mbf"}, "num_classes": 3, "backbone": {}, "head": {},
        "optimizer": {}, "scheduler": {}, "epoch": 1, "step_in_epoch": 0, "rng": [], "best": {}, "history": [],
    }  # fmt: skip
    return {**base, **fields}


def test_save_is_atomic_and_loads_back(tmp_path, monkeypatch):
    path = tmp_path / ck.RUN_CHECKPOINT
    ck.save_torch(path, _complete(epoch=3, w=torch.arange(4.0)))
    got = ck.load_checkpoint(path)
    assert got["epoch"] == 3 and torch.equal(got["w"], torch.arange(4.0))

    def crash(obj, f):  # the disk fills up half-way through a second save
        f.write(b"partial")  # torch.save writes through the file object it is given
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ck.save_torch(path, _complete(epoch=4))
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


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"epoch": "3"}, "field 'epoch' is str"),
        ({"epoch": -1}, "field 'epoch' is int (-1)"),
        ({"num_classes": 1.5}, "field 'num_classes' is float"),
        ({"num_classes": 0}, "'num_classes' is 0"),
        ({"config": [1, 2]}, "field 'config' is list"),
        ({"rng": None}, "field 'rng' is NoneType"),
        ({"history": {"a": 1}}, "field 'history' is dict"),
        ({"step_in_epoch": True}, "field 'step_in_epoch' is bool"),
    ],
)
def test_mistyped_fields_are_one_line_naming_the_file(tmp_path, fields, words):
    path = tmp_path / ck.RUN_CHECKPOINT
    ck.save_torch(path, _complete(**fields))
    with pytest.raises(InputError, match=re.escape(words)) as err:
        ck.load_checkpoint(path)
    assert str(path) in str(err.value) and "damaged" in str(err.value)
    broken = _complete()
    del broken["best"]
    ck.save_torch(path, broken)
    with pytest.raises(InputError, match="field 'best' is missing"):
        ck.load_checkpoint(path)


def test_a_truncated_checkpoint_is_called_truncated(tmp_path):
    path = tmp_path / ck.RUN_CHECKPOINT
    ck.save_torch(path, _complete(w=torch.arange(1000.0)))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="damaged, truncated") as err:
        ck.load_checkpoint(path)
    assert "run code" not in str(err.value)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    state = ck.capture_rng()
    ck.save_torch(tmp_path / "rng.pt", _complete(rng=[state]))  # one state per rank
    first = (torch.rand(3), np.random.rand(3), random.random())
    ck.restore_rng(ck.load_checkpoint(tmp_path / "rng.pt")["rng"][0])
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
