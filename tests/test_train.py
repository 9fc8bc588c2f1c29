"""The training loop: a real short run, exact resume, Ctrl-C, NaN stop, --init/--freeze, config, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.training import make_workspace
from typer.testing import CliRunner

from kface_cli.errors import InputError, KFaceError, ModelMismatchError, TrainingError
from kface_cli.train import checkpoint as ck
from kface_cli.train.config import TrainConfig, resolve_config
from kface_cli.train.loop import train, train_from_options
from kface_cli.train.sampler import EpochBatches
from kface_cli.train.setup import loader_workers
from kface_cli.train.state import read_log


@pytest.fixture(autouse=True)
def _quiet_single_thread(monkeypatch):
    # one thread: five test suites share two cores, and oversubscribed BLAS threads crawl
    monkeypatch.setenv("KFACE_NO_PROGRESS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def tiny(ws, **kw) -> TrainConfig:
    base = dict(
        workdir=str(ws),
        network="mbf_small",
        embedding_size=32,
        batch_size=6,
        epochs=2,
        workers=0,
        scale=16.0,
        lr=0.05,
        val_pairs="none",
        log_every=1,
        augment="none",  # exact comparisons; the default (auto) is checked on its own
    )
    base.update(kw)
    return TrainConfig(**base).validate()


def test_workers_follow_the_cores():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(cuda, 1, cores=16) == 8 and loader_workers(cuda, 4, cores=16) == 3
    assert loader_workers(cuda, 1, cores=2) == 1
    assert loader_workers(cpu, 1, cores=16) == 4 and loader_workers(cpu, 1, cores=2) == 1
    assert loader_workers(cpu, 1, cores=1) == 1  # loading overlaps the step even on one core


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_hands_over_channels_last_batches_equal_to_the_plain_collation(workers):
    """With channels_last (the default) the loader's batches are already in that memory format,
    so the step copies nothing; their values are those of the default collation."""
    from kface_cli.train.datasets import ArrayDataset
    from kface_cli.train.distributed import DistInfo
    from kface_cli.train.setup import _build_loader

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (24, 112, 112, 3), dtype=np.uint8), np.arange(24) % 4)
    for channels_last in (True, False):
        config = TrainConfig(batch_size=8, workers=workers, channels_last=channels_last).validate()
        sampler, loader, _ = _build_loader(config, DistInfo(device=torch.device("cpu")), ds)
        x, y = next(iter(loader))
        first = next(iter(sampler))
        ref = torch.utils.data.default_collate([ds[item] for item in first])
        assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last and (
            channels_last or x.is_contiguous()
        )
        if channels_last:
            assert x.contiguous(memory_format=torch.channels_last).data_ptr() == x.data_ptr()  # no copy in the step


def test_cpu_loader_workers_yield_to_training_and_leave_ctrl_c_to_it():
    """A CPU run's loader worker lowers its priority (it decodes in the training threads' gaps)
    and ignores SIGINT; checked in a child process, as a worker is one."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from kface_cli.train.setup import CPU_WORKER_NICE, _cpu_worker_init\n"
        "before = os.nice(0)\n"
        "_cpu_worker_init(0)\n"
        "print(os.nice(0) - before, min(CPU_WORKER_NICE, 19 - before), signal.getsignal(signal.SIGINT) == signal.SIG_IGN)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1] and out[2] == "True"  # raised by CPU_WORKER_NICE, up to the limit of 19


def test_fp16_scaler_grows_every_100_steps_as_insightface():
    from kface_cli.train.setup import _build_optimizer

    net, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = TrainConfig(precision="fp16", batch_size=4)
    _, sched, scaler = _build_optimizer(cfg, net, head, lr=0.1, steps=5, device=torch.device("cpu"))
    assert scaler.is_enabled() and scaler.get_growth_interval() == 100
    assert sched.get_last_lr() == [0.1, 0.1]


def test_epoch_batches_shard_global_batches_and_resume_mid_epoch():
    one = list(EpochBatches(20, 4, seed=1, epoch=3))
    r0 = list(EpochBatches(20, 2, seed=1, epoch=3, rank=0, world_size=2))
    r1 = list(EpochBatches(20, 2, seed=1, epoch=3, rank=1, world_size=2))
    assert len(one) == 5 and [a + b for a, b in zip(r0, r1)] == one  # same global batches
    assert list(EpochBatches(20, 4, seed=1, epoch=3, start_step=2)) == one[2:]
    assert list(EpochBatches(20, 4, seed=1, epoch=4)) != one
    assert len({i for batch in one for i, _, _ in batch}) == 20
    assert {key for batch in one for _, _, key in batch} == {(1, 3)}  # augmentation key: (seed, epoch)
    reused = EpochBatches(20, 4, seed=1, epoch=0)  # the loader's one sampler, moved from epoch to epoch
    reused.set_epoch(3, start_step=1)
    assert list(reused) == one[1:] and len(reused) == 4


def test_config_file_then_command_line(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nnetwork = "r18"\nbatch-size = 16\nmargin = [1.0, 0.3, 0.2]\nloss = "combined"\nlr = 0.02\n')
    cfg = resolve_config(f, {"batch_size": 8, "lr": None})
    assert (cfg.network, cfg.batch_size, cfg.lr, cfg.margin) == ("r18", 8, 0.02, (1.0, 0.3, 0.2))
    with pytest.raises(KFaceError, match="Valid options"):
        resolve_config(None, {"batchsize": 3})
    with pytest.raises(KFaceError, match="unknown optimizer"):
        resolve_config(None, {"optimizer": "adam"})
    tut = resolve_config("tutorial_r50")
    assert (tut.network, tut.loss, tut.scale, tut.margin, tut.batch_size, tut.lr, tut.epochs, tut.init) == (
        "r50",
        "arcface",
        64.0,
        (0.5,),
        16,
        0.02,
        20,
        "backbone.pth",
    )
    assert resolve_config(None, {"batch_size": 256}).base_lr() == pytest.approx(0.025)  # 0.1 * 256 / 1024
    assert resolve_config(None, {"batch_size": 64}).base_lr() == pytest.approx(0.02)  # floor for small batches


@pytest.mark.slow
def test_short_run_learns_and_run_folder_is_complete(ws):
    result = train(tiny(ws, name="rise", epochs=4, val_pairs=None, warmup_epochs=1))
    accs = [r["val"]["accuracy"] for r in result.history]
    losses = [r["loss"] for r in result.history]
    assert len(accs) == 4
    # Only what must hold on any CPU's arithmetic, with a wide margin: the order of the epochs' val
    # accuracies moves with the machine's float kernels (an AMD EPYC ends at its lowest), the loss
    # falls by far more than half (about 11 -> 2.5 here), and 90 pairs of unseen identities are
    # separated well above chance (0.5) in every epoch (0.73-0.94 seen on two CPUs).
    assert losses[-1] < 0.5 * losses[0], losses
    assert min(accs) > 0.6 and max(accs) > 0.7, accs
    run = result.run_dir
    for f in ("config.json", "backbone.pth", "backbone_last.pth", "checkpoint.pt", "log.jsonl", "plots.png"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["network"] == "mbf_small" and cfg["embedding_size"] == 32 and cfg["num_classes"] == 6
    # backbone.pth is the best epoch, insightface layout, loadable strictly
    from kface_cli.models.registry import get_backbone

    net = get_backbone("mbf_small", embedding_size=32)
    net.load_state_dict(torch.load(run / "backbone.pth", weights_only=True), strict=True)
    assert result.best_epoch == 1 + max(range(4), key=lambda i: (accs[i], i))  # ties: the later epoch
    ckpt = ck.load_checkpoint(run / "checkpoint.pt")
    last = torch.load(run / "backbone_last.pth", weights_only=True)
    assert all(torch.equal(last[k], ckpt["backbone"][k]) for k in last)
    assert {"config", "backbone", "head", "optimizer", "scheduler", "epoch", "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 4 and ckpt["head"]["weight"].shape == (6, 32)
    kinds = [r["type"] for r in read_log(run)]
    assert kinds.count("epoch") == 4 and kinds.count("step") == 4 * 6 and kinds[-1] == "end"


@pytest.mark.slow
def test_best_backbone_prefers_the_later_epoch_on_a_tie(ws, monkeypatch):
    from kface_cli.train import loop

    scores = iter([0.8, 0.9, 0.9])  # epochs 2 and 3 tie: epoch 3 trained longer at a lower lr
    monkeypatch.setattr(
        loop,
        "validate",
        lambda *a, **kw: {"accuracy": next(scores), "accuracy_std": 0, "threshold": 1, "tar": 1, "far": 1e-2},
    )
    result = train(tiny(ws, name="tie", epochs=3, val_pairs=None, max_steps_per_epoch=2, bn_recalibration=0))
    assert [r["best"] for r in result.history] == [True, True, True] and result.best_epoch == 3
    best = torch.load(result.run_dir / "backbone.pth", weights_only=True)
    final = ck.load_checkpoint(result.run_dir / "checkpoint.pt")["backbone"]
    assert all(torch.equal(best[k], final[k]) for k in best)


def _weights(run_dir):
    c = ck.load_checkpoint(run_dir / ck.RUN_CHECKPOINT)
    return c["backbone"], c["head"], c["optimizer"]


@pytest.mark.slow
def test_interrupt_then_resume_equals_uninterrupted_run(ws):
    train(tiny(ws, name="straight", batch_size=9))  # 4 steps per epoch

    def ctrl_c(epoch, step):
        if (epoch, step) == (0, 2):  # in the middle of the first of two epochs
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(ws, name="cut", batch_size=9), on_step=ctrl_c)
    saved = ck.load_checkpoint(ws / "runs" / "cut" / ck.RUN_CHECKPOINT)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 2)
    assert read_log(ws / "runs" / "cut")[-1]["type"] == "stopped"
    result = train_from_options(
        None, {"workdir": str(ws), "name": "cut", "batch_size": 99}, resume=True
    )  # batch ignored
    assert result.epochs == 2
    a_bb, a_head, a_opt = _weights(ws / "runs" / "straight")
    b_bb, b_head, b_opt = _weights(ws / "runs" / "cut")
    for k in a_bb:
        assert torch.equal(a_bb[k], b_bb[k]), k
    assert torch.equal(a_head["weight"], b_head["weight"])
    for pid, st in a_opt["state"].items():
        assert torch.equal(st["momentum_buffer"], b_opt["state"][pid]["momentum_buffer"])
    with pytest.raises(KFaceError, match="already finished"):
        train_from_options(None, {"workdir": str(ws), "name": "cut"}, resume=True)
    with pytest.raises(KFaceError, match="already exists"):
        train(tiny(ws, name="cut", batch_size=9))


@pytest.mark.slow
def test_resume_is_exact_with_augmentation_and_a_data_worker(ws):
    """--augment jitter --workers 1, Ctrl-C mid-epoch, --resume: the same backbone (digest) as the
    run never interrupted. Augmentation draws from (seed, epoch, index), not the worker's RNG."""
    from kface_cli.embedding.embedder import state_dict_digest

    opts = dict(batch_size=9, augment="jitter", workers=1)
    train(tiny(ws, name="aug-straight", **opts))

    def ctrl_c(epoch, step):
        if (epoch, step) == (0, 2):  # the worker has already prepared batches ahead
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(ws, name="aug-cut", **opts), on_step=ctrl_c)
    train_from_options(None, {"workdir": str(ws), "name": "aug-cut"}, resume=True)

    def digest(name, file):
        return state_dict_digest(torch.load(ws / "runs" / name / file, weights_only=True))

    for file in (ck.RUN_BACKBONE, ck.RUN_LAST_BACKBONE):
        assert digest("aug-straight", file) == digest("aug-cut", file), file
    # and augmentation did change what was learned (the check is not vacuous)
    train(tiny(ws, name="no-aug", batch_size=9, workers=1))
    assert digest("no-aug", ck.RUN_LAST_BACKBONE) != digest("aug-straight", ck.RUN_LAST_BACKBONE)


@pytest.mark.slow
def test_too_few_val_pairs_warn_and_a_backbone_is_still_written(ws, tmp_path, capsys):
    from kface_cli.formats.pairs import read_pairs_csv, write_pairs_csv

    few = ws / "split" / "few_pairs.csv"  # beside split/val, so the pairs' relative paths hold
    write_pairs_csv(few, read_pairs_csv(ws / "split" / "val_pairs.csv")[:6])
    result = train(tiny(ws, name="few-pairs", epochs=1, val_pairs=str(few), augment="auto"))
    assert "3 same-person and 3 different-person pairs; validation needs at least 20 of each" in capsys.readouterr().err
    assert (result.run_dir / ck.RUN_BACKBONE).is_file() and result.best_epoch == 1
    # --augment auto on a folder of faces: the recipe that generalises, recorded as used
    from kface_cli.train.augment import FOLDER_DEFAULT, parse_augment

    saved = json.loads((result.run_dir / ck.RUN_CONFIG).read_text())["augment"]
    assert parse_augment(saved) == parse_augment(FOLDER_DEFAULT)


@pytest.mark.slow
def test_resuming_a_copied_run_continues_the_copy(ws):
    import shutil

    train(tiny(ws, name="orig", epochs=1))
    shutil.copytree(ws / "runs" / "orig", ws / "runs" / "copy")
    before = {p.name: p.read_bytes() for p in (ws / "runs" / "orig").iterdir()}
    result = train_from_options(None, {"workdir": str(ws), "name": "copy", "epochs": 2}, resume=True)
    assert result.run_dir == ws / "runs" / "copy" and result.epochs == 2
    assert ck.load_checkpoint(ws / "runs" / "copy" / ck.RUN_CHECKPOINT)["epoch"] == 2
    assert ck.load_checkpoint(ws / "runs" / "copy" / ck.RUN_CHECKPOINT)["config"]["name"] == "copy"
    assert {p.name: p.read_bytes() for p in (ws / "runs" / "orig").iterdir()} == before  # untouched
    # a saved config with odd values is one line naming the checkpoint
    saved = ck.load_checkpoint(ws / "runs" / "copy" / ck.RUN_CHECKPOINT)
    saved["config"]["epochs"] = "many"
    ck.save_torch(ws / "runs" / "copy" / ck.RUN_CHECKPOINT, saved)
    with pytest.raises(InputError, match="checkpoint.pt: its saved training config is damaged"):
        train_from_options(None, {"workdir": str(ws), "name": "copy", "epochs": 3}, resume=True)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(ws, monkeypatch):
    from kface_cli.models import heads

    real = heads.MarginHead.forward
    calls = {"n": 0}

    def poisoned(self, emb, labels):
        calls["n"] += 1
        loss = real(self, emb, labels)
        return loss * float("nan") if calls["n"] == 8 else loss  # epoch 2, step 2

    monkeypatch.setattr(heads.MarginHead, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, step 2") as e:
        train(tiny(ws, name="nan"))
    assert "last good checkpoint" in str(e.value)
    assert ck.load_checkpoint(ws / "runs" / "nan" / ck.RUN_CHECKPOINT)["epoch"] == 1


@pytest.mark.slow
def test_init_loads_weights_and_freeze_keeps_them(ws, tmp_path):
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(3)
    start = get_backbone("mbf_small", embedding_size=32).state_dict()
    torch.save(start, tmp_path / "backbone.pth")
    # network and embedding size "auto": taken from the --init file
    result = train(
        tiny(
            ws, name="ft", epochs=1, init=str(tmp_path / "backbone.pth"), freeze=2, network="auto", embedding_size=None
        )
    )
    assert result.network == "mbf_small"
    assert json.loads((result.run_dir / "config.json").read_text())["embedding_size"] == 32
    after = torch.load(result.run_dir / "backbone.pth", weights_only=True)
    assert torch.equal(after["layers.0.layers.0.weight"], start["layers.0.layers.0.weight"])  # stage 1 frozen
    assert torch.equal(
        after["layers.2.layers.0.layers.0.weight"], start["layers.2.layers.0.layers.0.weight"]
    )  # stage 2 frozen
    assert torch.equal(
        after["layers.1.layers.1.running_mean"], start["layers.1.layers.1.running_mean"]
    )  # frozen BN stats
    assert not torch.equal(after["conv_sep.layers.0.weight"], start["conv_sep.layers.0.weight"])  # the rest trains
    torch.save(get_backbone("mbf", embedding_size=32).state_dict(), tmp_path / "mbf.pth")
    with pytest.raises(ModelMismatchError, match="--network mbf"):
        train(tiny(ws, name="wrong", init=str(tmp_path / "mbf.pth")))


@pytest.mark.slow
def test_cli_train_json(ws):
    from kface_cli.cli import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            "--workdir",
            str(ws),
            "--network",
            "mobilefacenet_small",
            "--embedding-size",
            "16",
            "--batch-size",
            "12",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--loss",
            "cosface",
            "--margin",
            "0.2",
            "--scale",
            "8",
            "--val-pairs",
            "none",
            "--name",
            "cli",
            "--precision",
            "bf16",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["network"] == "mbf_small" and out["epochs"] == 1 and out["num_classes"] == 6
    cfg = json.loads((ws / "runs" / "cli" / "config.json").read_text())
    assert cfg["loss"] == "cosface" and cfg["margin"] == [0.2] and cfg["scale"] == 8.0 and cfg["precision"] == "bf16"
    assert out["history"][0]["loss"] > 0  # a finite loss under bfloat16 autocast
    bad = CliRunner().invoke(app, ["train", "--workdir", str(ws), "--network", "r51"])
    assert bad.exit_code == 2 and "Valid networks" in bad.output


@pytest.mark.slow
def test_real_ctrl_c_leaves_a_checkpoint(tmp_path):
    """SIGINT to a real `kface train` process (with a DataLoader worker) stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ws = make_workspace(tmp_path, train_ids=4, val_ids=0, per_id=4)
    env = {**os.environ, "KFACE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kface_cli",
            "train",
            "--workdir",
            str(ws),
            "--network",
            "mbf_small",
            "--embedding-size",
            "16",
            "--batch-size",
            "4",
            "--epochs",
            "50",
            "--workers",
            "1",
            "--val-pairs",
            "none",
            "--name",
            "sig",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = ws / "runs" / "sig" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and '"step"' in log.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err
    saved = ck.load_checkpoint(ws / "runs" / "sig" / ck.RUN_CHECKPOINT)
    assert saved["epoch"] * 4 + saved["step_in_epoch"] >= 1
    assert read_log(ws / "runs" / "sig")[-1]["type"] == "stopped"


@pytest.mark.slow
def test_a_validation_set_too_small_to_measure_is_reported_and_not_used(ws, tmp_path, capsys):
    """10 pairs gave "70.00% +- 45.83%" and picked the "best" epoch by chance: now no validation."""
    from kface_cli.formats.pairs import read_pairs_csv, write_pairs_csv
    from kface_cli.train.validation import MIN_VAL_PAIRS_EACH, too_few_val_pairs

    pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    assert too_few_val_pairs(pairs) is None  # 45 + 45: enough
    small = [p for p in pairs if p.same][:5] + [p for p in pairs if not p.same][:5]
    assert "5 same-person and 5 different-person pairs" in too_few_val_pairs(small)
    just = [p for p in pairs if p.same][:MIN_VAL_PAIRS_EACH] + [p for p in pairs if not p.same][:MIN_VAL_PAIRS_EACH]
    assert too_few_val_pairs(just) is None and too_few_val_pairs(just[1:]) is not None
    write_pairs_csv(tmp_path / "few.csv", small)
    result = train(
        tiny(ws, name="few", epochs=2, val_pairs=str(tmp_path / "few.csv"), max_steps_per_epoch=1, bn_recalibration=0)
    )
    assert "too small to measure anything" in capsys.readouterr().err
    assert all("val" not in r for r in result.history) and result.best_accuracy is None
    assert result.best_epoch == 2  # the last epoch, not one picked by chance


def test_validation_of_a_backbone_gone_nan_is_a_training_error():
    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.formats.pairs import PairFaces
    from kface_cli.models.registry import get_backbone
    from kface_cli.train.validation import validate

    net = get_backbone("mbf_small", 32).eval()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    pairs = PairFaces(synthetic_faces(2), np.array([0]), np.array([1]), np.array([False]))
    with pytest.raises(TrainingError, match="validation stopped the run: .*NaN or infinite embeddings"):
        validate(net, pairs, network="mbf_small")
