"""A run's set-up (nanoGPT's "init" part): its folder, seeds, data, backbone and margin head,
optimizer, schedule and loader, validation pairs and ``config.json``."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli import console
from kface_cli.choices import Optimizer, Precision
from kface_cli.dataset.provenance import TRAINING_DATA_KEY, training_data
from kface_cli.defaults import auto_workers, available_cores
from kface_cli.errors import KFaceError, ModelMismatchError, TrainingError
from kface_cli.train import checkpoint as ck
from kface_cli.train import distributed
from kface_cli.train.config import AUTO, TrainConfig, save_config_json
from kface_cli.train.sampler import EpochBatches, steps_per_epoch
from kface_cli.train.state import Run, discard_unstarted, restore
from kface_cli.train.validation import too_few_val_pairs

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from kface_cli.workspace import Workspace

    pass


SCALER_GROWTH_INTERVAL = 100  # fp16 GradScaler: steps without overflow before the scale doubles (insightface)


PREFETCH_BATCHES = 4  # batches each loader worker prepares ahead


CPU_CORES_PER_WORKER = 4  # on a CPU device the cores train; loader workers get a quarter of them
CPU_WORKER_NICE = 10  # on a CPU device loader workers yield to the training threads (see loader_workers)


def _default_network(device: Any) -> str:
    return "r50" if device.type == "cuda" else "mbf_small"


def _auto_batch_size(device: Any, num_images: int, world_size: int) -> int:
    """128 on a GPU, 32 on a CPU; at most a quarter of the data per global batch (>= 2 for BatchNorm)."""
    preferred = 128 if device.type == "cuda" else 32
    return max(2, min(preferred, num_images // (4 * world_size)))


def loader_workers(device: Any, world_size: int = 1, cores: int | None = None) -> int:
    """DataLoader workers per process when ``--workers`` is not given, from the machine's cores.

    The rule: loading must overlap the step, never wait for it and never slow it.

    * On a GPU the cores only feed the device: every core but the training process's own
      (capped by :func:`~kface_cli.defaults.auto_workers`).
    * On a CPU the cores run the network, and one worker decodes far faster than the network
      consumes (a 112x112 JPEG: ~0.25 ms; mbf trains ~12 samples per CPU second): a quarter of
      the cores, and **at least one** even on 2 cores. With 0 the step waits for every batch to
      be decoded (issue 24 reported mbf on 2 loaded cores at 11.5 samples/s with 0 workers and
      23.3 with 1; interleaved runs on the shared machine could not separate the two: see
      docs/performance.md, `bench_train_defaults.py --also-workers 0`). The workers run at a lower
      priority (:data:`CPU_WORKER_NICE`), so that they fill the gaps of the training threads
      instead of pre-empting them; their work is small (~5 ms a batch of 32, one thread).
    """
    per_process = max(1, (cores or available_cores()) // max(1, world_size))
    if device.type == "cpu":
        return max(1, per_process // CPU_CORES_PER_WORKER)
    return auto_workers(cores=per_process - 1)


def _read_init(path: str, network: str | None = None) -> tuple[dict[str, Any], Path]:
    """``--init`` weights: insightface backbone.pth, our backbone.pth, a run folder or checkpoint.pt;
    or an ONNX model (a file, or a fetched pack's name) whose weights map exactly onto a kface
    backbone (:mod:`kface_cli.embedding.onnx_import`)."""
    from kface_cli.embedding.loading import load_torch_weights

    p = Path(path).expanduser()
    if not p.exists():
        from kface_cli.hub.cache import resolve_pack

        pack = resolve_pack(path) if len(p.parts) == 1 else None
        if pack is None:
            raise KFaceError(
                f"--init weights not found: {p}",
                hint="Pass an insightface backbone.pth, a kface run folder, an .onnx model or a fetched pack's name.",
            )
        p = pack
    if p.is_file() and p.suffix.lower() == ".onnx":
        from kface_cli.embedding.onnx_import import onnx_to_weights

        weights = onnx_to_weights(p, network)
        console.info(f"--init {path}: {p.name} mapped onto kface's {weights.network} (embeddings checked)")
        return weights.state_dict, weights.source
    weights = load_torch_weights(p)  # weights_only; strips module./_orig_mod. prefixes
    return weights.state_dict, weights.source


def _apply_init(backbone: torch.nn.Module, sd: dict[str, Any], p: Path) -> None:
    """Load ``--init`` weights strictly; a mismatch names the network the file is for."""
    from kface_cli.models.registry import infer_network

    want = backbone.state_dict()
    if set(sd) != set(want) or any(tuple(sd[k].shape) != tuple(want[k].shape) for k in want):
        try:
            other = infer_network(sd)
            hint = f"These are {other} weights: pass --network {other} (and the matching --embedding-size)."
        except KFaceError:
            hint = "Check --network and --embedding-size."
        raise ModelMismatchError(f"--init {p} does not fit the configured backbone", hint=hint)
    backbone.load_state_dict(sd, strict=True)


def _freeze(backbone: torch.nn.Module, n_stages: int) -> list[Any]:
    """Freeze the first ``n_stages`` stages (stem = 1); returns the frozen modules (kept in eval)."""
    stages = list(backbone.stages)
    if n_stages > len(stages):
        raise KFaceError(f"--freeze {n_stages}: this network has {len(stages)} stages", hint=f"Use 0..{len(stages)}.")
    frozen = stages[:n_stages]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad = False
    return frozen


def _resolve_val_pairs(config: TrainConfig, ws: Any) -> Path | None:
    if config.val_pairs is not None:
        if config.val_pairs.strip().lower() == "none":
            return None
        p = Path(config.val_pairs).expanduser()
        if not p.is_file():
            raise KFaceError(
                f"validation pairs not found: {p}",
                hint="Pass --val-pairs FILE.csv, or --val-pairs none to train without.",
            )
        return p
    return ws.val_pairs if ws.val_pairs.is_file() else None


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the training process (which stops cleanly, see
    :class:`StopFlag`); otherwise they would die and take the run down without a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def setup(config: TrainConfig, info: distributed.DistInfo, resume: bool) -> Run:
    """Run folder, seeds, data, model, optimizer, schedule, loader, validation pairs, config.json;
    with ``resume`` the checkpoint's state (:func:`restore`)."""
    import torch

    from kface_cli.models.registry import (
        DEFAULT_EMBEDDING_SIZE,
        canonical_name,
        infer_embedding_size,
        infer_network,
    )
    from kface_cli.workspace import Workspace

    t_start = time.perf_counter()
    device = info.device
    ws = Workspace.resolve(config.workdir)

    name, run_dir, ckpt = _run_folder(config, info, ws, resume)

    _seed(config, device)

    data_path, dataset = _training_data(config, ws)
    # "auto" resolved (on a folder of faces: FOLDER_DEFAULT): config.json says what was used
    config = config.replace(augment=dataset.augment.spec() if dataset.augment else "none")
    num_images, num_classes = len(dataset), dataset.num_classes

    # -- model: "auto" values follow --init, the device and the data -----------------------
    init = (
        _read_init(config.init, None if config.network == AUTO else config.network)
        if config.init and ckpt is None
        else None
    )
    if config.network != AUTO:
        network = canonical_name(config.network)
    elif init is not None:
        network = infer_network(init[0])
    else:
        network = _default_network(device)
    embedding_size = config.embedding_size or (
        infer_embedding_size(init[0]) if init is not None else DEFAULT_EMBEDDING_SIZE
    )
    batch_size = config.batch_size or _auto_batch_size(device, num_images, info.world_size)
    config = config.replace(network=network, name=name, embedding_size=embedding_size, batch_size=batch_size)
    steps = steps_per_epoch(num_images, config.batch_size, info.world_size, config.max_steps_per_epoch)
    if steps == 0:
        raise TrainingError(
            f"the global batch ({config.batch_size} x {info.world_size} processes) is larger than the data ({num_images} images)",
            hint="Lower --batch-size.",
        )
    backbone, frozen, head = _model(config, init, num_classes, device)

    lr = config.base_lr(info.world_size)
    optimizer, scheduler, scaler = _build_optimizer(config, backbone, head, lr=lr, steps=steps, device=device)
    sampler, loader, workers = _build_loader(config, info, dataset)

    run = Run(
        config=config,
        info=info,
        run_dir=run_dir,
        dataset=dataset,
        num_classes=num_classes,
        steps=steps,
        backbone=backbone,
        model=backbone,
        head=head,
        frozen=frozen,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
        loader=loader,
        workers=workers,
        lr=lr,
        data_source=str(getattr(dataset, "source", data_path)),
        window=torch.zeros(config.log_every, device=device),
        t_start=t_start,
    )
    if ckpt is not None:
        restore(run, ckpt)
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.model = DDP(backbone, device_ids=[device.index] if device.type == "cuda" else None)

    run.val_path = _resolve_val_pairs(config, ws)
    if info.is_main:
        _load_val_pairs(run)
    run.validating = bool(distributed.broadcast_object(info, run.pair_faces is not None))

    if info.is_main:
        _write_run_files(run, data_path, num_images)
    run.t_train = time.perf_counter()
    return run


def _run_folder(config: TrainConfig, info: distributed.DistInfo, ws: Workspace, resume: bool):
    """The run's name and folder, and with ``resume`` its checkpoint; a new run never reuses a folder."""
    name = config.name or distributed.broadcast_object(info, f"{config.network}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = ws.run(name)
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = ck.load_checkpoint(run_dir / ck.RUN_CHECKPOINT)
    elif (run_dir / ck.RUN_CHECKPOINT).exists():
        raise KFaceError(
            f"run {name!r} already exists ({run_dir})", hint="Continue it with --resume, or choose another --name."
        )
    return name, run_dir, ckpt


def _seed(config: TrainConfig, device: Any) -> None:
    """Seed every RNG the run uses (and let cuDNN pick its kernels on a GPU)."""
    import torch

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels


def _training_data(config: TrainConfig, ws: Workspace) -> tuple[Any, Any]:
    """``(where, dataset)``: identity folders, a train.rec, or ``synthetic:...`` in-memory data."""
    from kface_cli.train.datasets import SYNTHETIC_PREFIX, open_training_data

    if config.data and config.data.startswith(SYNTHETIC_PREFIX):
        data_path: Any = config.data  # random in-memory data (throughput checks)
    else:
        data_path = (
            Path(config.data).expanduser() if config.data else ws.require(ws.train_dir, "training data", "kface split")
        )
    dataset = open_training_data(data_path, flip=False, augment=config.augment, resize=config.resize_images)
    return data_path, dataset


def _model(
    config: TrainConfig, init: Any, num_classes: int, device: Any
) -> tuple[torch.nn.Module, list[Any], torch.nn.Module]:
    """The backbone (with ``--init`` weights and frozen stages) and the margin head, on ``device``."""
    import torch

    from kface_cli.models.heads import build_head
    from kface_cli.models.registry import get_backbone

    network = config.network
    lowp = config.precision != Precision.FP32
    backbone = get_backbone(
        network,
        config.embedding_size,
        fp16=lowp,
        autocast_dtype="bfloat16" if config.precision == Precision.BF16 else "float16",
    )
    if init is not None:
        _apply_init(backbone, *init)
    frozen = _freeze(backbone, config.freeze)
    head = build_head(num_classes, config.embedding_size, config.head_config())
    backbone.to(device)
    head.to(device)
    if config.channels_last:
        backbone.to(memory_format=torch.channels_last)
    return backbone, frozen, head


def _load_val_pairs(run: Run) -> None:
    """The validation pairs' faces (rank 0), loaded once into ``run.pair_faces``; none, or too
    few to measure anything, is a warning and training goes on without validation."""
    if run.val_path is None:
        console.warn(
            "no validation pairs (split/val_pairs.csv or --val-pairs): training without validation; backbone.pth will be the last epoch"
        )
    else:
        from kface_cli.embedding.photos import prepare_pairs
        from kface_cli.formats.pairs import read_pairs_csv

        pairs = read_pairs_csv(run.val_path)
        too_few = too_few_val_pairs(pairs)
        if too_few:
            console.warn(
                f"{run.val_path}: {too_few}: too small to measure anything; training without validation, "
                "backbone.pth will be the last epoch. Make a larger val part (`kface split --val-ids`)."
            )
        else:
            run.pair_faces = prepare_pairs(pairs, description="Loading val pairs")


def _write_run_files(run: Run, data_path: Any, num_images: int) -> None:
    """The run folder, config.json and log.jsonl (rank 0); a failure here leaves no folder behind."""
    cfg = run.config
    from kface_cli.atomic import ensure_dir

    run.created_dir = not run.run_dir.exists()
    ensure_dir(run.run_dir)
    try:
        save_config_json(
            run.run_dir / ck.RUN_CONFIG,
            run.config,
            num_classes=run.num_classes,
            num_images=num_images,
            world_size=run.info.world_size,
            data_source=run.data_source,
            **{
                TRAINING_DATA_KEY: training_data(
                    str(data_path), getattr(run.dataset, "classes", []), init=run.config.init
                )
            },
            val_pairs_file=str(run.val_path) if run.val_path else None,
            steps_per_epoch=run.steps,
            base_lr=run.lr,
            device=str(run.device),
            loader_workers=run.workers,
        )
        console.info(
            f"Training {cfg.network} ({cfg.loss}) on {num_images} images of {run.num_classes} identities -> {run.run_dir}"
            f" [{run.info.world_size} x {run.device}, {run.steps} steps/epoch, lr {run.lr:g}, {run.workers} data workers]"
        )
        run.log = open(run.run_dir / ck.RUN_LOG, "a", encoding="utf-8")
    except BaseException:
        discard_unstarted(run)
        raise


def _build_optimizer(
    config: TrainConfig, backbone: torch.nn.Module, head: torch.nn.Module, *, lr: float, steps: int, device: Any
):
    """SGD or AdamW over (backbone, head), the per-iteration lr schedule and the fp16 GradScaler."""
    import torch

    from kface_cli.train.schedule import poly_scheduler

    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}, {"params": list(head.parameters())}]
    if config.optimizer == Optimizer.SGD:
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay)
    scheduler = poly_scheduler(optimizer, steps * config.epochs, int(round(config.warmup_epochs * steps)))
    scaler = torch.amp.GradScaler(
        device.type, growth_interval=SCALER_GROWTH_INTERVAL, enabled=config.precision == Precision.FP16
    )
    return optimizer, scheduler, scaler


def _cpu_worker_init(worker_id: int) -> None:
    """A loader worker of a run on the CPU: as :func:`_ignore_sigint`, at a lower priority
    (:data:`CPU_WORKER_NICE`): it decodes in the gaps of the training threads."""
    _ignore_sigint(worker_id)
    try:
        os.nice(CPU_WORKER_NICE)
    except (AttributeError, OSError):  # Windows; or a limit: loading still overlaps the step
        pass


def _collate_channels_last(items: list[tuple[Any, int]]) -> tuple[Any, Any]:
    """The default collation's batch, made channels_last in the loader worker (one thread, idle
    between batches) instead of the training step, where the copy was most of the main thread's
    own work per step (4.4 of 5.9 ms for a batch of 32 on 2 cores; 1.25 ms without it)."""
    import torch

    # numpy, one thread: torch.stack on small tensors in a process with several torch threads
    # cost ~90 ms a batch in the thread pool (with --workers 0 that is the training process)
    first = items[0][0]
    nhwc = np.empty((len(items), first.shape[1], first.shape[2], first.shape[0]), dtype=np.float32)
    for i, (x, _) in enumerate(items):
        nhwc[i] = x.numpy().transpose(1, 2, 0)  # (H, W, 3): channels_last memory
    x = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # (B, 3, H, W) with channels_last strides, no copy
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


def _build_loader(config: TrainConfig, info: distributed.DistInfo, dataset: Any):
    """The one DataLoader of the run: its workers live across epochs (the sampler moves instead)."""
    import torch

    sampler = EpochBatches(
        len(dataset),
        config.batch_size,
        seed=config.seed,
        epoch=0,
        rank=info.rank,
        world_size=info.world_size,
        flip=config.flip,
        max_steps=config.max_steps_per_epoch,
    )
    workers = config.workers if config.workers is not None else loader_workers(info.device, info.world_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",  # page-locked batches: asynchronous host-to-device copies
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers else None,
        collate_fn=_collate_channels_last if config.channels_last else None,
        worker_init_fn=(_cpu_worker_init if info.device.type == "cpu" else _ignore_sigint) if workers else None,
    )
    return sampler, loader, workers
