"""Validation after each epoch: BatchNorm statistics re-estimated on training images, then
verification on the val pairs with the same embedder and metrics as ``kface evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kface_cli.defaults import EMBED_BATCH_SIZE
from kface_cli.errors import InputError, TrainingError
from kface_cli.train import checkpoint as ck

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from kface_cli.formats.pairs import PairFaces


VAL_FAR = 1e-2  # TAR is reported at this FAR after every epoch


#: Validation needs at least this many same-person and as many different-person pairs: two of
#: each in every fold of the 10-fold accuracy. Fewer measure nothing (10 pairs: "70.00% +- 45.83%")
#: and would pick the "best" epoch by chance.
MIN_VAL_PAIRS_EACH = 20


def too_few_val_pairs(pairs: Sequence[Any]) -> str | None:
    """Why ``pairs`` are too few to validate on (:data:`MIN_VAL_PAIRS_EACH`), or None."""
    same = sum(1 for p in pairs if p.same)
    different = len(pairs) - same
    if min(same, different) >= MIN_VAL_PAIRS_EACH:
        return None
    return (
        f"{same} same-person and {different} different-person pairs; validation needs at least "
        f"{MIN_VAL_PAIRS_EACH} of each (2 per fold of the 10-fold accuracy)"
    )


def validate(
    backbone: torch.nn.Module, pair_faces: PairFaces, *, network: str, batch_size: int = EMBED_BATCH_SIZE
) -> dict[str, Any]:
    """Verification on prepared val pairs (flip TTA, as insightface): 10-fold accuracy, threshold,
    TAR at FAR 1e-2, AUC, EER. Uses the same embedder and metrics as ``kface evaluate``."""
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.metrics import far_key, verification_metrics
    from kface_cli.embedding.photos import embed_pairs

    embedder = embedder_from_module(ck.unwrap(backbone), flip=True, network=network, backend="torch")
    try:
        dist, issame = embed_pairs(embedder, pair_faces, batch_size=batch_size)
    except InputError as e:  # NaN or zero embeddings: the weights went bad although the loss did not
        raise TrainingError(
            f"validation stopped the run: {e.message}",
            hint="The last good checkpoint is kept; resume with a lower --lr, or train with --precision fp32.",
        ) from None
    m = verification_metrics(dist, issame, fars=(VAL_FAR,))
    tar = m["tar_at_far"].get(far_key(VAL_FAR)) or {}
    return {
        "accuracy": m.get("accuracy"),
        "accuracy_std": m.get("accuracy_std"),
        "threshold": m.get("threshold"),
        "tar": tar.get("tar"),  # at FAR "far"
        "far": VAL_FAR,
        "auc": m.get("auc"),
        "eer": m.get("eer"),
        "n_pairs": m.get("n_pairs"),
    }


def recalibrate_batchnorm(
    backbone: torch.nn.Module,
    dataset: Any,
    *,
    num_images: int,
    batch_size: int,
    device: Any,
    seed: int,
    frozen: list[Any] = (),
) -> None:
    """Re-estimate BatchNorm running statistics with the current weights ("precise BN").

    Running statistics lag the weights (momentum 0.1) and start from mean 0 / variance 1, which
    is far from the truth of a freshly initialised MobileFaceNet (its depthwise layers shrink
    activations); in a short run eval-mode embeddings then collapse and validation says nothing.
    This resets them and averages ``num_images`` training images (fixed ones, no flips, no grad).
    Training itself never reads running statistics, so the optimisation is unchanged; frozen
    stages keep their loaded statistics.
    """
    import torch

    skip = {id(m) for f in frozen for m in f.modules()}
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in skip]
    n = min(num_images, len(dataset))
    if not bns or n < 2:
        return
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()[:n]
    momenta = [m.momentum for m in bns]
    was_training = backbone.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        backbone.train()
        for f in frozen:
            f.eval()
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                idx = order[lo : lo + batch_size]
                if len(idx) < 2:
                    break
                x = torch.stack([dataset[(i, False)][0] for i in idx]).to(device)  # (b, 3, 112, 112)
                backbone(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        backbone.train(was_training)
