"""Margin heads: ArcFace and its family, sub-center ArcFace, softmax baselines, and Partial FC.

Two pieces, as in insightface (``losses.py`` + ``partial_fc_v2.py``):

* a **margin** turns cosine logits into scaled, margin-penalised logits:
  ``margin(cos_logits (N, C), labels (N,)) -> logits (N, C)``. ``labels[i] == -1`` means "this
  sample's class is not among these columns" (another rank's shard, or not sampled): no margin.
* a **classifier** (:class:`MarginHead`) holds the class centres ``W`` (C*K rows for K
  sub-centres), samples them (Partial FC), shards them across ranks, computes
  ``cos = normalize(x) . normalize(W)`` and returns the cross-entropy loss:
  ``head(embeddings (N, D), labels (N,)) -> loss ()``.

Combined margin (m1, m2, m3): the target logit becomes ``cos(m1*theta + m2) - m3``; every logit
is multiplied by ``s``. ArcFace = (1, m, 0), CosFace = (1, 0, m), SphereFace-style = (m, 0, 0),
normalised softmax = (1, 0, 0); plain softmax is an unnormalised ``Wx + b``.

**theta + m > pi.** ``cos(theta + m)`` stops decreasing once ``theta + m`` passes pi, so a
sample far from its centre would be pushed *towards* larger angles. kface follows the original
ArcFace paper: where ``cos(theta) <= cos(pi - m)`` the target logit is ``cos(theta) - m*sin(m)``
(a CosFace-style penalty), elsewhere ``cos(theta + m) = cos(theta)cos(m) - sin(theta)sin(m)``,
computed without ``arccos`` and with real gradients (insightface's current code instead adds
the margin inside ``torch.no_grad()`` and has no fallback). For ``m1 != 1`` (SphereFace-style,
combined) the angle is ``arccos`` of the clamped cosine and, past the turning point
``theta_t = (pi - m2) / m1``, the target logit continues as ``cos(theta) - cos(theta_t) - 1 - m3``:
continuous and still decreasing in theta. Both rules are tested in tests/test_heads.py.

Partial FC (``sample_rate < 1``): each step keeps the centres of every class in the batch plus a
random sample of the others, ``max(sample_rate * C_local, #positives, 1)`` in all (the sample
size depends on the batch, so this step waits for the device, as insightface's does). With
``torch.distributed`` initialised the centres are split across ranks (rank r holds a contiguous
block of classes), embeddings and labels are all-gathered, and the softmax is computed across the
shards; the result equals one process holding every class, loss value included (log-sum-exp
minus the target logit, exact).

Nothing in the margin or the loss depends on the data's values for its shapes (no ``nonzero``,
no boolean indexing), so a training step never makes the host wait for the accelerator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kface_cli.choices import Loss
from kface_cli.defaults import DEFAULT_LOGIT_SCALE
from kface_cli.errors import KFaceError

DEFAULT_SCALE = DEFAULT_LOGIT_SCALE
#: Default margins per loss, as (m1, m2, m3) of the combined margin (insightface's values).
DEFAULT_MARGINS: dict[str, tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),
    "subcenter": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "sphereface": (1.35, 0.0, 0.0),
    "combined": (1.0, 0.3, 0.2),
    "normsoftmax": (1.0, 0.0, 0.0),
    "softmax": (1.0, 0.0, 0.0),
}
DEFAULT_SUBCENTERS = 3  # K in the sub-center ArcFace paper
_EPS = 1e-7
FULL_INIT_MAX = 1 << 26  # class-centre values drawn in full on every rank (256 MB of float32)


@dataclass(frozen=True)
class HeadConfig:
    """What defines a head. ``margin`` is () for the loss's default, one value (the loss's own
    margin: ArcFace m, CosFace m, SphereFace m1) or three values (m1, m2, m3)."""

    loss: str = "arcface"
    scale: float = DEFAULT_SCALE
    margin: tuple[float, ...] = ()
    subcenters: int = 1  # K; "subcenter" defaults to 3
    sample_rate: float = 1.0  # Partial FC: fraction of negative centres used per step

    def margins(self) -> tuple[float, float, float]:
        """The (m1, m2, m3) this config means."""
        check_loss(self.loss)
        m = tuple(float(v) for v in self.margin)
        if len(m) == 0:
            return DEFAULT_MARGINS[self.loss]
        if len(m) == 3:
            return m  # type: ignore[return-value]
        if len(m) != 1:
            raise KFaceError(f"--margin takes one value or three (m1,m2,m3), got {len(m)}: {self.margin}")
        if self.loss in (Loss.ARCFACE, Loss.SUBCENTER):
            return (1.0, m[0], 0.0)
        if self.loss == Loss.COSFACE:
            return (1.0, 0.0, m[0])
        if self.loss == Loss.SPHEREFACE:
            return (m[0], 0.0, 0.0)
        raise KFaceError(
            f"--margin with --loss {self.loss} needs three values m1,m2,m3"
            if self.loss == Loss.COMBINED
            else f"--loss {self.loss} has no margin; drop --margin"
        )

    def num_subcenters(self) -> int:
        if self.loss == Loss.SUBCENTER and self.subcenters <= 1:
            return DEFAULT_SUBCENTERS
        return int(self.subcenters)


def check_loss(name: Loss | str) -> str:
    """The loss's name (lower case), or :class:`InputError` listing the valid ones."""
    return Loss.parse(name, "loss").value


# ------------------------------------------------------------------------------------------
# Margins: (cos_logits, labels) -> logits
# ------------------------------------------------------------------------------------------


class CombinedMargin(nn.Module):
    """Target logit ``cos(m1*theta + m2) - m3``, all logits times ``s`` (see the module doc for
    how theta + m > pi is handled)."""

    def __init__(self, s: float = DEFAULT_SCALE, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        assert m1 >= 1.0 and m2 >= 0.0 and m3 >= 0.0, f"margins must be m1 >= 1, m2 >= 0, m3 >= 0; got {(m1, m2, m3)}"
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """psi(cos theta) for the target class, unscaled. ``cos``: any shape, in [-1, 1]."""
        m1, m2, m3 = self.m1, self.m2, self.m3
        if m1 == 1.0:
            if m2 == 0.0:
                return cos - m3
            # cos(theta + m2) without arccos; sin(theta) >= 0 for theta in [0, pi]
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(_EPS))
            with_margin = cos * math.cos(m2) - sin * math.sin(m2)
            fallback = cos - m2 * math.sin(m2)  # the paper's rule where theta + m2 > pi
            return torch.where(cos > math.cos(math.pi - m2), with_margin, fallback) - m3
        theta = torch.acos(cos.clamp(-1.0 + _EPS, 1.0 - _EPS))
        theta_t = (math.pi - m2) / m1  # beyond it, cos(m1*theta + m2) would rise again
        with_margin = torch.cos(m1 * theta + m2)
        fallback = cos - math.cos(theta_t) - 1.0  # continuous at theta_t, decreasing after it
        return torch.where(theta <= theta_t, with_margin, fallback) - m3

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # cos: (N, C) in [-1, 1]; labels: (N,) column of the target class, -1 = not in these columns
        assert cos.dim() == 2 and labels.shape == (cos.shape[0],), (
            f"cos {tuple(cos.shape)}, labels {tuple(labels.shape)}"
        )
        # no data-dependent shapes (no nonzero, no boolean indexing): the host never waits for the device
        has = labels >= 0  # (N,)
        col = labels.clamp_min(0)[:, None]  # (N, 1); rows without a target touch column 0 and write it back
        current = cos.gather(1, col)  # (N, 1)
        target = torch.where(has[:, None], self.target_logit(current), current)  # (N, 1)
        out = cos.scatter(1, col, target)  # out-of-place: gradients flow through both
        return out * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


# ------------------------------------------------------------------------------------------
# Distributed helpers (only used when torch.distributed is initialised with world_size > 1)
# ------------------------------------------------------------------------------------------


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather with a gradient: backward sums every rank's gradient for our slice.

    The sum is multiplied by world_size because DistributedDataParallel then *averages* the
    backbone gradients over ranks: together they give exactly the single-process gradient of the
    global-batch mean loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)  # (world*N, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // ctx.world
        return grad[ctx.rank * n : (ctx.rank + 1) * n] * ctx.world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy when each rank holds some of the class columns.

    ``logits`` (Ng, C_local) of the gathered batch; ``labels`` (Ng,) local column or -1.
    Forward all-reduces the row max, the sum of exponentials and the target logit; backward is
    local: (softmax - onehot) / Ng.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        row_max = logits.max(dim=1).values  # (Ng,)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        shifted = logits - row_max[:, None]  # (Ng, C_local)
        exp = shifted.exp()
        denom = exp.sum(dim=1)  # (Ng,)
        dist.all_reduce(denom, op=dist.ReduceOp.SUM)
        has = labels >= 0  # (Ng,)
        col = labels.clamp_min(0)[:, None]  # (Ng, 1)
        # target logit - max, summed over ranks (exactly one rank holds each target)
        target = shifted.gather(1, col).squeeze(1) * has  # (Ng,)
        dist.all_reduce(target, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(exp / denom[:, None], col, has)
        # -log softmax = log(sum exp(z - max)) - (z_target - max): exact, no floor on the probability
        return (denom.log() - target).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        prob, col, has = ctx.saved_tensors
        grad = prob.scatter_add(1, col, -has[:, None].to(prob.dtype))  # softmax - onehot
        return grad * (grad_out / prob.shape[0]), None


# ------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------


class MarginHead(nn.Module):
    """Class centres + margin + cross-entropy: ``head(embeddings (N, D), labels (N,)) -> loss``.

    Args:
        num_classes: identities in the training data (all ranks together).
        embedding_size: D, the backbone's output width.
        config: loss, scale, margin, sub-centres K and Partial FC sample rate.

    Under ``torch.distributed`` (world_size > 1) each rank holds its own block of classes: do not
    wrap the head in DistributedDataParallel (its parameters differ per rank by design); save
    each rank's ``state_dict`` or gather it with :meth:`full_state_dict`.
    """

    def __init__(self, num_classes: int, embedding_size: int, config: HeadConfig = HeadConfig()):
        super().__init__()
        check_loss(config.loss)
        if num_classes < 2:
            raise KFaceError(f"training needs at least 2 classes (identities), found {num_classes}")
        if not 0.0 < config.sample_rate <= 1.0:
            raise KFaceError(f"--sample-rate must be in (0, 1], got {config.sample_rate}")
        self.config = config
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.rank, self.world_size = _dist_info()
        self.K = config.num_subcenters()
        # contiguous class block of this rank (sizes differ by at most one)
        base, extra = divmod(self.num_classes, self.world_size)
        self.num_local = base + (1 if self.rank < extra else 0)
        self.class_start = base * self.rank + min(self.rank, extra)
        self.plain_softmax = config.loss == Loss.SOFTMAX
        self.weight = nn.Parameter(self._initial_weight())  # (C_local*K, D)
        self.bias = nn.Parameter(torch.zeros(self.num_local)) if self.plain_softmax else None
        m1, m2, m3 = config.margins()
        self.margin = None if self.plain_softmax else CombinedMargin(config.scale, m1, m2, m3)

    def _initial_weight(self) -> torch.Tensor:
        """N(0, 0.01) class centres. Up to FULL_INIT_MAX values, every rank draws the whole matrix
        and keeps its block, so a sharded run starts exactly where a single process would; beyond
        that (millions of classes) each rank draws only its block."""
        rows_total = self.num_classes * self.K
        if rows_total * self.embedding_size <= FULL_INIT_MAX:
            full = torch.normal(0, 0.01, (rows_total, self.embedding_size))
            return full[self.class_start * self.K : (self.class_start + self.num_local) * self.K].clone()
        return torch.normal(0, 0.01, (self.num_local * self.K, self.embedding_size))

    # -- pieces, usable on their own (tests, analysis) ----------------------------------------
    def class_logits(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits before the margin for the local classes ``rows`` (default all): cosine (max over
        sub-centres) or, for plain softmax, ``Wx + b``. (N, D) -> (N, len(rows))."""
        x = embeddings.float()
        W = self.weight.view(self.num_local, self.K, self.embedding_size)  # (C_local, K, D)
        if rows is not None:
            W = W.index_select(0, rows)  # (S, K, D)
        if self.plain_softmax:
            b = self.bias if rows is None else self.bias.index_select(0, rows)
            return x @ W[:, 0, :].t() + b  # (N, S)
        cos = F.normalize(x, dim=1) @ F.normalize(W, dim=2).flatten(0, 1).t()  # (N, S*K)
        cos = cos.view(x.shape[0], -1, self.K).max(dim=2).values  # (N, S): best sub-centre
        return cos.clamp(-1.0, 1.0)

    def dominant_subcenter(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Index (0..K-1) of the sub-centre nearest each sample's own class (single process).
        Samples far from their class's dominant sub-centre are label-noise candidates."""
        assert self.world_size == 1, "dominant_subcenter is for single-process analysis"
        W = F.normalize(self.weight.view(self.num_local, self.K, self.embedding_size), dim=2)  # (C, K, D)
        cos = torch.einsum("nd,nkd->nk", F.normalize(embeddings.float(), dim=1), W[labels])  # (N, K)
        return cos.argmax(dim=1)

    # -- training -------------------------------------------------------------------------------
    def _sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Partial FC: choose the class rows used this step; return (rows or None, labels as
        columns of those rows, -1 where the class is not here)."""
        if self.config.sample_rate >= 1.0:
            return None, local_labels
        has = local_labels >= 0
        positives = torch.unique(local_labels[has], sorted=True)  # (P,)
        # at least one row: a rank that holds none of the batch's classes still takes part
        num_sample = max(int(self.config.sample_rate * self.num_local), int(positives.numel()), 1)
        score = torch.rand(self.num_local, device=local_labels.device)  # (C_local,)
        score[positives] = 2.0  # positives always kept
        rows = torch.topk(score, k=num_sample).indices.sort().values  # (S,)
        cols = torch.where(has, torch.searchsorted(rows, local_labels.clamp_min(0)), -1)
        return rows, cols

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # embeddings: (N, D); labels: (N,) global class ids 0..C-1
        assert embeddings.dim() == 2 and embeddings.shape[1] == self.embedding_size, (
            f"embeddings {tuple(embeddings.shape)}"
        )
        labels = labels.long().view(-1)
        distributed = self.world_size > 1
        if distributed:
            embeddings = _AllGather.apply(embeddings.float().contiguous())  # (world*N, D)
            import torch.distributed as dist

            parts = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(parts, labels.contiguous())
            labels = torch.cat(parts)  # (world*N,)
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        rows, cols = self._sample(local)
        logits = self.class_logits(embeddings, rows)  # (N', S)
        if self.margin is not None:
            logits = self.margin(logits, cols)
        if distributed:
            return _ShardedCrossEntropy.apply(logits, cols)
        return F.cross_entropy(logits, cols)

    # -- sharded state (checkpoints) -----------------------------------------------------------
    def _class_sizes(self) -> list[int]:
        base, extra = divmod(self.num_classes, self.world_size)
        return [base + (1 if r < extra else 0) for r in range(self.world_size)]

    @torch.no_grad()
    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """A per-class tensor of this rank (first dim = local classes x rows per class: weight,
        bias, their optimizer states) gathered over all ranks in class order. Call on every rank."""
        if self.world_size == 1:
            return t.detach().clone()
        import torch.distributed as dist

        per_class = t.shape[0] // self.num_local
        sizes = self._class_sizes()
        pad = torch.zeros((max(sizes) * per_class, *t.shape[1:]), dtype=t.dtype, device=t.device)
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        return torch.cat([p[: n * per_class] for p, n in zip(parts, sizes)])

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's block of a gathered per-class tensor (inverse of :meth:`gather_rows`)."""
        per_class = full.shape[0] // self.num_classes
        assert per_class * self.num_classes == full.shape[0], (
            f"tensor of {full.shape[0]} rows is not per-class for {self.num_classes} classes"
        )
        return full[self.class_start * per_class : (self.class_start + self.num_local) * per_class].clone()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's state with every rank's classes gathered in order (call on all ranks)."""
        return {k: self.gather_rows(v) for k, v in self.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state saved by :meth:`full_state_dict` (any world size) into this rank's shard."""
        self.load_state_dict({k: self.local_rows(v) for k, v in state.items()})


def build_head(num_classes: int, embedding_size: int, config: HeadConfig) -> MarginHead:
    """The head a training config asks for (see :class:`HeadConfig`)."""
    return MarginHead(num_classes, embedding_size, config)
