"""Faces from embeddings: model inversion with the BatchNorm-statistics prior (``kface invert``).

The ArcFace paper (TPAMI) shows that a trained network alone, with no generator, turns an
embedding back into an identity-preserving face: optimise the input image so that its embedding
matches the target, while the statistics that every BatchNorm layer sees are pulled to the
running statistics it stored during training (the "BN prior"; real faces produce those
statistics, adversarial noise does not)::

    loss = (1 - cos(f(jitter(x)), target))                       identity
         + BN_WEIGHT * mean over BatchNorm2d layers of
             ||mean(a) - running_mean|| + ||var(a) - running_var||   (a: the layer's input)
         + TV_WEIGHT * total variation(x)                        smoothness
    jitter: a random shift of up to JITTER_PX pixels and a random horizontal flip per step

``x`` is the network input itself ((x - 127.5) / 127.5, RGB), kept in [-1, 1], optimised with
Adam and a cosine-decaying learning rate. Without the BN prior (``bn_prior=False``) the same
optimisation finds an image the model maps to the target but that other models do not: the
measurement in the README embeds the results with an independently trained second model.

What this means for deployments: a leaked gallery of templates leaks faces. Galleries are
written 0600 and are biometric data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kface_cli.errors import InputError, KFaceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_STEPS = 300
DEFAULT_LR = 0.05
BN_WEIGHT = 0.01  # measured: 0.05 halves the rank-1 transfer of small models (README)
TV_WEIGHT = 2.0
JITTER_PX = 4
INIT_STD = 0.05  # the starting image: N(0, INIT_STD) around mid-grey, in network-input units
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_EMBEDDING_BYTES = 1 << 20  # an --embedding .npy file is one vector (a few KB); refuse anything large


class BatchNormPrior:
    """Forward hooks on every ``BatchNorm2d`` of ``module``: how far the statistics of each
    layer's input are from the running statistics the layer stored in training.

    ::

        with BatchNormPrior(backbone) as prior:
            emb = backbone(x)
            loss = prior.loss()      # mean over layers; the hooks are removed on exit

    The module stays in eval mode (normalisation uses the running statistics and they are never
    updated); the hooks only measure. Statistics are over the batch and spatial positions.
    """

    def __init__(self, module: torch.nn.Module):
        from torch import nn

        self.layers = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
        self._terms: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> BatchNormPrior:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._terms = []

    def _hook(self, layer: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        a = inputs[0].float()  # (N, C, H, W)
        mean = a.mean(dim=(0, 2, 3))  # (C,)
        var = a.var(dim=(0, 2, 3), unbiased=False)  # (C,)
        self._terms.append(
            (mean - layer.running_mean).norm() + (var - layer.running_var).norm()  # type: ignore[operator]
        )

    def loss(self) -> torch.Tensor:
        """The mean distance over the layers run since the last call (then forgets them)."""
        assert self._terms, "no BatchNorm2d layer ran since the last loss() (forward first, inside the with block)"
        import torch

        out = torch.stack(self._terms).mean()
        self._terms = []
        return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of (N, C, H, W) images."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()


@dataclass
class Inversion:
    images: np.ndarray  # (B, 112, 112, 3) BGR uint8
    cosines: np.ndarray  # (B,) cos(f(image), target) under the inverted model, on the saved 8-bit images
    losses: list[float] = field(default_factory=list)  # total loss per step
    seconds: float = 0.0


def _to_bgr8(x: torch.Tensor) -> np.ndarray:
    from kface_cli.face.preprocess import MEAN, STD

    rgb = (x.detach().permute(0, 2, 3, 1).numpy() * STD + MEAN).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def invert_embedding(
    module: torch.nn.Module,
    targets: np.ndarray,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seeds: Sequence[int] = (0,),
    bn_prior: bool = True,
    bn_weight: float = BN_WEIGHT,
    augment: bool = True,
    on_step: Any = None,
) -> Inversion:
    """Optimise 112x112 faces whose embeddings under ``module`` match ``targets`` (B, D) or (D,).

    The B images are optimised together, as one batch (the BatchNorm prior compares the batch's
    statistics, as in the paper); image i starts from noise drawn with ``seeds[i]`` (one target
    and several seeds: several faces of one person). ``module``: a torch backbone, put in eval
    mode; its weights are not changed. ``bn_weight``: the prior's weight in the loss.
    ``augment``: the random shift and flip of every step (off: a deterministic descent).
    ``on_step()`` is called after every step.
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    from kface_cli.defaults import FACE_SIZE
    from kface_cli.face.preprocess import faces_to_input

    t0 = time.perf_counter()
    want = F.normalize(torch.as_tensor(np.asarray(targets, np.float32)).reshape(-1, np.shape(targets)[-1]), dim=1)
    if len(seeds) != want.shape[0]:
        want = want.expand(len(seeds), -1)  # one target, several seeds
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    x = torch.cat(
        [torch.randn(1, 3, FACE_SIZE, FACE_SIZE, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )  # (B, 3, 112, 112)
    x = (x * INIT_STD).clamp(-1, 1).requires_grad_(True)
    g = torch.Generator().manual_seed(int(seeds[0]))  # jitter and flips
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    losses: list[float] = []
    with BatchNormPrior(module) if bn_prior else contextlib.nullcontext() as prior:
        for _ in range(steps):
            view = x
            if augment:
                dy, dx = (int(v) for v in torch.randint(-JITTER_PX, JITTER_PX + 1, (2,), generator=g))
                view = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                if bool(torch.rand((), generator=g) < 0.5):
                    view = view.flip(3)
            emb = module(view)  # (B, D)
            loss = 1.0 - F.cosine_similarity(emb, want).mean() + TV_WEIGHT * total_variation(x)
            if prior is not None:
                loss = loss + bn_weight * prior.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(-1.0, 1.0)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise KFaceError(
                    f"the inversion diverged (loss {losses[-1]}) after {len(losses)} steps",
                    hint="Lower --lr; a model whose BatchNorm statistics were never trained cannot be inverted.",
                )
            if on_step is not None:
                on_step()
    images = _to_bgr8(x)
    with torch.no_grad():
        final = module(torch.from_numpy(faces_to_input(images)))
    cosines = F.cosine_similarity(final, want).numpy()
    return Inversion(images=images, cosines=cosines, losses=losses, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------
# Targets: a face, a gallery identity, an embedding file
# ------------------------------------------------------------------------------------------


def read_embedding_file(path: Path, size: int) -> np.ndarray:
    """One embedding (D,) from a ``.npy`` file (no pickles; bounded size)."""
    if not path.is_file():
        raise InputError(f"embedding file not found: {path}")
    if path.stat().st_size > MAX_EMBEDDING_BYTES:
        raise InputError(
            f"{path} is {path.stat().st_size:,} bytes: not one embedding", hint="Save one vector with numpy.save."
        )
    try:
        v = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"cannot read {path} as a .npy array: {e}", hint="Save one vector with numpy.save.") from None
    v = np.asarray(v, dtype=np.float32).reshape(-1) if v.dtype.kind in "fiu" else None
    if v is None or v.size != size or not np.isfinite(v).all() or not np.linalg.norm(v) > 0:
        raise InputError(
            f"{path} must hold one finite, non-zero vector of {size} numbers (the model's embedding size)",
            hint="Embeddings of another model cannot be inverted with this one.",
        )
    return v


def _target(
    embedder: Any, *, image: Path | None, name: str | None, gallery: Path | None, embedding: Path | None
) -> tuple[np.ndarray, str]:
    given = [k for k, v in (("--image", image), ("--name", name), ("--embedding", embedding)) if v is not None]
    if len(given) != 1:
        raise InputError(
            "give exactly one target: --image FACE, --name NAME (from --gallery) or --embedding FILE.npy"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if embedding is not None:
        return read_embedding_file(Path(embedding), embedder.embedding_size), str(embedding)
    if image is not None:
        from kface_cli.embedding.photos import FaceLoader

        face = FaceLoader()(Path(image))
        if face is None:
            raise InputError(f"no face found in {image}", hint="Pass a photo with a visible face, or an aligned crop.")
        return embedder.embed(face[None])[0], str(image)
    from kface_cli.gallery.store import Gallery, ModelInfo

    store = Gallery(gallery)  # type: ignore[arg-type]
    if not store.exists():
        raise InputError(
            f"gallery not found: {gallery}", hint="Enroll people first with `kface enroll`, or pass --gallery."
        )
    store.check_model(ModelInfo.of(embedder))
    rows = store.read()
    mine = [i for i, n in enumerate(rows.names) if n == name]
    if not mine:
        raise InputError(
            f"{name!r} is not in gallery {gallery} ({len(set(rows.names))} identities)",
            hint="`kface gallery` lists the identities.",
        )
    return rows.embeddings[mine].mean(axis=0), f"{name} ({len(mine)} templates in {gallery})"


@dataclass
class InvertResult:
    model: dict[str, Any]
    target: str
    bn_prior: bool
    steps: int
    outputs: list[dict[str, Any]]  # path, seed, cosine
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "bn_prior": self.bn_prior,
            "steps": self.steps,
            "outputs": self.outputs,
            "seconds": round(self.seconds, 2),
        }


def output_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one output; ``<stem>-1<suffix>`` ... ``<stem>-n<suffix>`` for several."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--out must be a .png or .jpg file, got {out.name}", hint="e.g. --out face.png")
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(n)]


def invert(
    model: str | Path | None = None,
    *,
    out: Path,
    image: Path | None = None,
    name: str | None = None,
    gallery: Path | None = None,
    embedding: Path | None = None,
    n: int = 1,
    steps: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    bn_prior: bool = True,
    network: str | None = None,
    workdir: Path | None = None,
) -> InvertResult:
    """``kface invert``: faces whose embedding matches a face's, a gallery identity's or a vector's.

    ``n`` outputs use seeds ``seed`` ... ``seed + n - 1``; torch models only (gradients).
    """
    from kface_cli.choices import check_seed

    check_seed(seed)
    check_seed(seed + max(n, 1) - 1, "--seed + --n - 1")
    from kface_cli import console
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import load_torch_backbone
    from kface_cli.face.imageio import write_image
    from kface_cli.workspace import Workspace

    t0 = time.perf_counter()
    steps = DEFAULT_STEPS if steps is None else int(steps)
    lr = DEFAULT_LR if lr is None else float(lr)
    if n < 1 or steps < 1 or not lr > 0:
        raise KFaceError(f"--n and --steps must be at least 1 and --lr positive (got {n}, {steps}, {lr:g})")
    paths = output_paths(Path(out), n)
    from kface_cli.atomic import check_output

    for path in paths:  # never over the photo, the gallery or the model it reads
        check_output(path, inputs=[image, embedding, gallery, model], option="--out")
    module, net, size, source = load_torch_backbone(model, workdir=workdir, network=network, purpose="kface invert")
    embedder = embedder_from_module(module, network=net, backend="torch", source=source, embedding_size=size)
    if gallery is None and name is not None:
        gallery = Workspace.resolve(workdir).gallery
    target, described = _target(embedder, image=image, name=name, gallery=gallery, embedding=embedding)
    seeds = [seed + i for i in range(n)]
    with console.progress("Inverting", total=steps) as bar:
        inv = invert_embedding(module, target, steps=steps, lr=lr, seeds=seeds, bn_prior=bn_prior, on_step=bar.advance)
    outputs = []
    for path, s_, face, cos in zip(paths, seeds, inv.images, inv.cosines):
        write_image(path, face)
        outputs.append({"path": str(path), "seed": s_, "cosine": round(float(cos), 4)})
    return InvertResult(embedder.describe(), described, bn_prior, steps, outputs, time.perf_counter() - t0)
