"""What a run folder holds, and how it is written (atomically) and read back.

``runs/<name>/``:

* ``config.json``   the resolved config (+ num_classes, world size, data source)
* ``checkpoint.pt`` everything needed to continue exactly: backbone, head (all classes, gathered
  from every rank), optimizer (head states gathered too), scheduler, grad scaler, RNG states of
  every rank, completed epochs and steps, best accuracy so far, per-epoch history. Loadable
  with ``torch.load(..., weights_only=True)``.
* ``backbone.pth``  the best backbone alone (the later epoch on ties): a plain state_dict in
  insightface's layout.
* ``backbone_last.pth`` the last epoch's backbone, same layout.
* ``log.jsonl``     one JSON object per line: ``{"type": "step"|"epoch"|"stopped", ...}``.
* ``plots.png``     training loss, learning rate and validation accuracy.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.errors import InputError
from kface_cli.workspace import (  # noqa: F401 (the run folder's files)
    RUN_BACKBONE,
    RUN_CHECKPOINT,
    RUN_CONFIG,
    RUN_LAST_BACKBONE,
    RUN_LOG,
    RUN_PLOTS,
)

CHECKPOINT_FORMAT = "kface-checkpoint/1"


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename: never a half-written file.

    torch reports a failed write (a full disk) as a ``RuntimeError`` from its C++ writer; the
    file object records the ``OSError`` underneath, so a full disk is one line and the previous
    checkpoint stays as it was.
    """
    import torch

    from kface_cli.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = _RecordingFile(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise
        f.flush()
        os.fsync(f.fileno())


class _RecordingFile:
    """A write-only file that remembers the ``OSError`` its last write raised."""

    def __init__(self, f: Any):
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_torch` (loaded on the CPU, tensors only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}", hint="Nothing to resume; start the run without --resume.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise InputError(f"out of memory while reading checkpoint {path}") from None
    except Exception as e:  # corrupt or truncated file, or not ours
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot read checkpoint {path}: the file is damaged, truncated or not written by kface ({detail})",
            hint="Restore the run folder from a copy, or start a new run without --resume.",
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a kface checkpoint", hint="Pass a run folder made by `kface train`.")
    for key, kinds in CHECKPOINT_FIELDS.items():
        value = ckpt.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise InputError(
                f"{path} is damaged: its field {key!r} is {type(value).__name__ if key in ckpt else 'missing'}"
                + (f" ({value})" if isinstance(value, (int, float)) else ""),
                hint="Start a new run (without --resume), or restore the run folder from a copy.",
            )
    if not ckpt["num_classes"]:
        raise InputError(f"{path} is damaged: its field 'num_classes' is 0", hint="Start a new run.")
    return ckpt


#: The fields every kface checkpoint has, and their types (checked on load, before any is used).
CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "num_classes": int,
    "backbone": dict,
    "head": dict,
    "optimizer": dict,
    "scheduler": dict,
    "epoch": int,
    "step_in_epoch": int,
    "rng": list,
    "best": dict,
    "history": list,
}


def capture_rng(device: Any = None) -> dict[str, Any]:
    """Every RNG the training touches, in a form ``weights_only`` loading accepts."""
    import torch

    state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [state[0], state[1].tolist(), int(state[2]), int(state[3]), float(state[4])],
        "python": random.getstate(),
    }
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(state: dict[str, Any], device: Any = None) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and device is not None and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def unwrap(model: Any) -> Any:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(model, "module", model)


def backbone_state_dict(model: Any) -> dict[str, Any]:
    """Plain insightface-layout state_dict (no ``module.`` prefix), on the CPU, contiguous
    (a channels-last model's weights are saved in the usual layout)."""
    import torch

    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in unwrap(model).state_dict().items()
    }
