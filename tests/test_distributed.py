"""Two CPU processes with gloo, started as ``torchrun --nproc_per_node 2`` starts them: the sharded
head (Partial FC across ranks) is exact, both ranks end with identical weights, and the run equals
one process training on the same global batches."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers.training import make_workspace

from kface_cli.models.heads import HeadConfig, build_head

C, D, N_PER_RANK, WORLD = 7, 5, 3, 2  # 7 classes: rank 0 holds 4, rank 1 holds 3
LR, SCALE, EMB, BATCH = 0.05, 16.0, 16, 4  # the training run: batch 4 per rank = global 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(WORLD * N_PER_RANK, D, generator=g)
    labels = torch.tensor([0, 6, 3, 3, 5, 1])
    weight = torch.randn(C, D, generator=g)
    return emb, labels, weight


def _worker(rank: int, out_dir: str, ws: str, port: int) -> None:
    import torch.distributed as dist
    from typer.testing import CliRunner

    from kface_cli.cli import app

    torch.set_num_threads(1)
    # the environment torchrun sets; `kface train` below joins this same process group
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        KFACE_NO_PROGRESS="1",
    )
    dist.init_process_group("gloo")
    # 1. the sharded head alone (compared with one process in the parent)
    emb, labels, weight = _inputs()
    head = build_head(C, D, HeadConfig(loss="arcface", scale=16.0))
    assert head.num_local == (4 if rank == 0 else 3)
    with torch.no_grad():
        head.weight.copy_(head.local_rows(weight))
    mine = emb[rank * N_PER_RANK : (rank + 1) * N_PER_RANK].clone().requires_grad_(True)
    loss = head(mine, labels[rank * N_PER_RANK : (rank + 1) * N_PER_RANK])
    loss.backward()
    # a sample pointing away from its own centre: loss ~80, above the old -log(1e-30) = 69 cap
    far = build_head(C, D, HeadConfig(loss="arcface", scale=64.0))
    with torch.no_grad():
        far.weight.copy_(far.local_rows(weight))
    far_loss = far(-weight[labels][rank * N_PER_RANK : (rank + 1) * N_PER_RANK], mine_labels(rank, labels))
    torch.save(
        {
            "loss": loss.detach(),
            "far_loss": far_loss.detach(),
            "emb_grad": mine.grad,
            "w_grad": head.gather_rows(head.weight.grad),
            "weight": head.full_state_dict()["weight"],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    # Partial FC per shard: this rank's positives of the gathered batch are always sampled
    pfc = build_head(C, D, HeadConfig(loss="arcface", scale=16.0, sample_rate=0.5))
    local = labels - pfc.class_start
    local[(local < 0) | (local >= pfc.num_local)] = -1
    rows, cols = pfc._sample(local)
    assert set(local[local >= 0].tolist()) <= set(rows.tolist()) and torch.equal(
        rows[cols[cols >= 0]], local[local >= 0]
    )
    assert torch.isfinite(pfc(mine.detach(), labels[rank * N_PER_RANK : (rank + 1) * N_PER_RANK]))
    # 2. `kface train` as torchrun would start it (it destroys the process group at the end)
    cfg = os.path.join(out_dir, "run.toml")
    res = CliRunner().invoke(
        app, ["train", "--config", cfg, "--workdir", ws, "--batch-size", str(BATCH), "--name", "ddp"]
    )
    assert res.exit_code == 0, res.output


def mine_labels(rank: int, labels: torch.Tensor) -> torch.Tensor:
    return labels[rank * N_PER_RANK : (rank + 1) * N_PER_RANK]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_reference(ws):
    """The same run in one process, global batch 8, with BatchNorm statistics per half batch
    (what each rank computes). Returns (backbone, head, per-step losses)."""
    import random

    import numpy as np

    from kface_cli.models.registry import get_backbone
    from kface_cli.train.datasets import open_training_data
    from kface_cli.train.sampler import EpochBatches
    from kface_cli.train.schedule import poly_scheduler

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ds = open_training_data(ws / "split" / "train", flip=False)
    backbone = get_backbone("mbf_small", EMB)
    head = build_head(ds.num_classes, EMB, HeadConfig(loss="arcface", scale=SCALE))
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        [{"params": params}, {"params": list(head.parameters())}], lr=LR, momentum=0.9, weight_decay=5e-4
    )
    batches = list(EpochBatches(len(ds), WORLD * BATCH, seed=0, epoch=0))
    sched = poly_scheduler(opt, len(batches), 0)
    backbone.train()
    losses = []
    for batch in batches:
        x = torch.stack([ds[item][0] for item in batch])  # (8, 3, 112, 112)
        y = torch.tensor([ds[item][1] for item in batch])
        emb = torch.cat([backbone(x[:BATCH]), backbone(x[BATCH:])])  # BatchNorm per rank's half
        loss = head(emb, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():  # progress: the first batch's loss after training
        x = torch.stack([ds[item][0] for item in batches[0]])
        y = torch.tensor([ds[item][1] for item in batches[0]])
        after = head(torch.cat([backbone(x[:BATCH]), backbone(x[BATCH:])]), y).item()
    return backbone, head, losses, after


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    ws = make_workspace(tmp_path / "ws", train_ids=6, val_ids=0, per_id=4)  # 24 images: 3 global batches of 8
    (tmp_path / "run.toml").write_text(
        f'[train]\nnetwork = "mbf_small"\nembedding_size = {EMB}\nbatch_size = 99\nepochs = 1\nworkers = 0\nlr = {LR}\n'
        f'scale = {SCALE}\nval_pairs = "none"\nlog_every = 1\ndevice = "cpu"\nchannels_last = false\naugment = "none"\n'
    )  # batch_size: the command line wins; contiguous as the reference below (NHWC kernels round differently)
    mp.spawn(_worker, args=(str(tmp_path), str(ws), _free_port()), nprocs=WORLD, join=True)

    # -- the sharded head equals one process holding every class ----------------------------
    emb, labels, weight = _inputs()
    head = build_head(C, D, HeadConfig(loss="arcface", scale=16.0))
    with torch.no_grad():
        head.weight.copy_(weight)
    e = emb.clone().requires_grad_(True)
    loss = head(e, labels)
    loss.backward()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    torch.testing.assert_close(r0["loss"], loss.detach())
    torch.testing.assert_close(r1["loss"], loss.detach())
    far = build_head(C, D, HeadConfig(loss="arcface", scale=64.0))
    with torch.no_grad():
        far.weight.copy_(weight)
    far_loss = far(-weight[labels], labels).detach()
    assert far_loss > 75  # the sharded loss is the exact cross-entropy, not capped at -log(1e-30)
    torch.testing.assert_close(r0["far_loss"], far_loss)
    torch.testing.assert_close(r1["far_loss"], far_loss)
    torch.testing.assert_close(r0["weight"], weight)
    torch.testing.assert_close(r0["w_grad"], head.weight.grad)
    # each rank gets world_size x its slice of the gradient: DDP's averaging over ranks undoes it
    torch.testing.assert_close(torch.cat([r0["emb_grad"], r1["emb_grad"]]) / WORLD, e.grad)

    # -- the training run -------------------------------------------------------------------
    run = ws / "runs" / "ddp"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    end = log[-1]
    assert end["type"] == "end" and len(end["backbone_digest_per_rank"]) == 2
    assert len(set(end["backbone_digest_per_rank"])) == 1, "both ranks must end with identical weights"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["batch_size"] == BATCH and cfg["steps_per_epoch"] == 3

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran single-threaded too; two shared cores are busy enough
    try:
        backbone, ref_head, ref_losses, first_batch_after = _single_process_reference(ws)
    finally:
        torch.set_num_threads(threads)
    ddp_losses = [r["loss"] for r in log if r["type"] == "step"]
    assert ddp_losses == pytest.approx(ref_losses, rel=1e-4)  # step by step, the same losses
    assert first_batch_after < ref_losses[0]  # and they are progress: the first batch's loss went down
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    # the weights moved the same way, up to float32 rounding: BatchNorm over 4 samples amplifies
    # it (one process with 1 vs 2 threads already differs by ~3e-4); without per-rank BatchNorm
    # in the reference the updates differ by ~100%
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    start = get_backbone("mbf_small", EMB).state_dict()
    keys = [k for k in start if "running" not in k and "num_batches" not in k]
    ddp_update = torch.cat([(ckpt["backbone"][k] - start[k]).flatten() for k in keys])
    ref_update = torch.cat([(backbone.state_dict()[k] - start[k]).flatten() for k in keys])
    assert ref_update.norm() > 0.1
    assert (ddp_update - ref_update).norm() / ref_update.norm() < 1e-2
    head_update = ckpt["head"]["weight"] - ref_head.weight.detach()
    assert head_update.norm() / ref_head.weight.detach().norm() < 1e-2


@pytest.mark.parametrize("ended", [True, False])
def test_leaving_the_group_drains_it_first_after_a_normal_end(monkeypatch, ended):
    """After a normal end every rank meets at a barrier before leaving, so gloo's worker threads
    have released the last collectives' tensors before the process exits (one releasing them
    during interpreter shutdown aborts the rank: SIGABRT). After an error there is no barrier:
    the other ranks may never reach it."""
    import torch.distributed as dist

    from kface_cli.train import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.DistInfo(rank=0, world_size=2))

    def fake_train(config, info, resume, on_step):
        assert calls == []  # the group is left only after the run
        if not ended:
            raise RuntimeError("a rank failed")
        return "result"

    from types import SimpleNamespace

    from kface_cli.train import loop

    monkeypatch.setattr(loop, "_train", fake_train)
    config = SimpleNamespace(device="cpu")
    if ended:
        assert loop.train(config) == "result"
    else:
        with pytest.raises(RuntimeError):
            loop.train(config)
    assert calls == (["barrier", "destroy"] if ended else ["destroy"])
    distributed.cleanup(distributed.DistInfo())  # one process: nothing to leave
    assert calls == (["barrier", "destroy"] if ended else ["destroy"])
