"""Two CPU processes with gloo (as ``torchrun --nproc_per_node 2 -m kface_cli train`` starts them):
the sharded Partial FC head is exact, both ranks end with identical weights, and they learn at the
same pace as one process seeing the same global batches."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from kface_cli.models.heads import HeadConfig, build_head
from trainingdata import make_workspace

C, D, N_PER_RANK, WORLD = 7, 5, 3, 2  # 7 classes: rank 0 holds 4, rank 1 holds 3


def _inputs():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(WORLD * N_PER_RANK, D, generator=g)
    labels = torch.tensor([0, 6, 3, 3, 5, 1])
    weight = torch.randn(C, D, generator=g)
    return emb, labels, weight


def _train_args(ws, name, batch):
    return ["train", "--workdir", str(ws), "--network", "mbf_small", "--embedding-size", "16", "--batch-size", str(batch),
            "--epochs", "2", "--workers", "0", "--lr", "0.05", "--scale", "16", "--val-pairs", "none", "--name", name,
            "--sample-rate", "0.5", "--device", "cpu"]


def _worker(rank: int, init_file: str, out_dir: str, ws: str, port: int) -> None:
    import torch.distributed as dist
    from typer.testing import CliRunner

    from kface_cli.cli import app

    torch.set_num_threads(1)
    # 1. the sharded head alone, against the single-process head (checked in the parent)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    emb, labels, weight = _inputs()
    head = build_head(C, D, HeadConfig(loss="arcface", scale=16.0))
    assert head.num_local == (4 if rank == 0 else 3)
    with torch.no_grad():
        head.weight.copy_(head.local_rows(weight))
    mine = emb[rank * N_PER_RANK:(rank + 1) * N_PER_RANK].clone().requires_grad_(True)
    loss = head(mine, labels[rank * N_PER_RANK:(rank + 1) * N_PER_RANK])
    loss.backward()
    torch.save({"loss": loss.detach(), "emb_grad": mine.grad, "w_grad": head.gather_rows(head.weight.grad),
                "weight": head.full_state_dict()["weight"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
    # 2. `kface train` with the environment torchrun sets
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), KFACE_NO_PROGRESS="1")
    res = CliRunner().invoke(app, _train_args(ws, "ddp", 4))
    assert res.exit_code == 0, res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws", train_ids=6, val_ids=0, per_id=4)
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), str(ws), _free_port()), nprocs=WORLD, join=True)

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
    torch.testing.assert_close(r0["weight"], weight)
    torch.testing.assert_close(r0["w_grad"], head.weight.grad)
    # each rank gets world_size x its slice of the gradient: DDP's averaging over ranks undoes it
    torch.testing.assert_close(torch.cat([r0["emb_grad"], r1["emb_grad"]]) / WORLD, e.grad)

    # -- the same training in one process (batch 8 = 2 x 4) ---------------------------------
    from typer.testing import CliRunner

    from kface_cli.cli import app

    monkeypatch.setenv("KFACE_NO_PROGRESS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(app, _train_args(ws, "one", 8))
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output

    logs = {n: [json.loads(line) for line in (ws / "runs" / n / "log.jsonl").read_text().splitlines()] for n in ("ddp", "one")}
    end = logs["ddp"][-1]
    assert end["type"] == "end" and len(end["backbone_digest_per_rank"]) == 2
    assert len(set(end["backbone_digest_per_rank"])) == 1, "both ranks must end with identical weights"
    cfg = json.loads((ws / "runs" / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["steps_per_epoch"] == 3
    # one process with batch 8 sees the same global batches (and learning rate) as two with 4:
    # both must learn, at the same pace (BatchNorm statistics are per process, so not bit-equal)
    losses = {n: [r["loss"] for r in logs[n] if r["type"] == "epoch"] for n in logs}
    assert losses["ddp"][1] < losses["ddp"][0] and losses["one"][1] < losses["one"][0], losses
    for a, b in zip(losses["ddp"], losses["one"]):
        assert abs(a - b) / b < 0.15, losses
    heads = {n: torch.load(ws / "runs" / n / "checkpoint.pt", weights_only=True)["head"]["weight"] for n in logs}
    assert heads["ddp"].shape == heads["one"].shape == (6, 16)  # the sharded head is saved whole
