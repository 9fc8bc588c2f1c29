"""Backbones by name: a small decorator registry (timm-style, but strict).

Every backbone is registered once under a canonical name plus aliases::

    >>> from kface_cli.models.registry import get_backbone, list_backbones
    >>> list_backbones()
    ['mbf', 'mbf_small', 'r18', 'r34', 'r50', 'r100', 'r200']
    >>> net = get_backbone("r50", embedding_size=512)      # (N,3,112,112) in [-1,1] -> (N,512)

Duplicate registrations and unknown names fail loudly (with the valid names listed); so do
unknown keyword arguments, which are checked against the backbone's config dataclass at once
instead of deep inside a constructor.

:func:`infer_network` tells which registered backbone a plain ``state_dict`` (e.g. insightface's
``backbone.pth``) belongs to, by comparing key sets and shapes against each model built on the
``meta`` device (no memory, no time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kface_cli.errors import KFaceError, ModelMismatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "register_backbone",
    "get_backbone",
    "list_backbones",
    "canonical_name",
    "infer_network",
    "infer_embedding_size",
    "backbone_config",
]

DEFAULT_EMBEDDING_SIZE = 512
#: The built-in backbones' canonical names, as :func:`list_backbones` orders them: help texts name
#: them from here without importing torch (tests/test_registry.py checks that they are exactly
#: the ones ``iresnet`` and ``mobilefacenet`` register).
BACKBONE_NAMES = ("mbf", "mbf_small", "r18", "r34", "r50", "r100", "r200")


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[..., Any]  # (embedding_size=..., **overrides) -> nn.Module
    config_factory: Callable[..., Any]  # (embedding_size=..., **overrides) -> config dataclass
    aliases: tuple[str, ...]
    description: str


_BACKBONES: dict[str, _Entry] = {}  # canonical name -> entry
_ALIASES: dict[str, str] = {}  # alias (lower case) -> canonical name


def register_backbone(name: str, *, aliases: tuple[str, ...] = (), description: str = "") -> Callable:
    """Register ``fn(embedding_size: int, **overrides) -> config dataclass`` as a backbone.

    The decorated function returns the backbone's *config*; the registry builds the module with
    ``config.build()``. Registering a name (or alias) twice raises ``ValueError``: that is a
    programming error, not a user error.
    """

    def decorator(config_fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name.lower()
        for n in (key, *(a.lower() for a in aliases)):
            if n in _ALIASES:
                raise ValueError(f"backbone name {n!r} is already registered (for {_ALIASES[n]!r})")
        _BACKBONES[key] = _Entry(
            name=key,
            factory=lambda **kw: config_fn(**kw).build(),
            config_factory=config_fn,
            aliases=tuple(a.lower() for a in aliases),
            description=description or ((config_fn.__doc__ or "").strip().splitlines() or [""])[0],
        )
        _ALIASES[key] = key
        for a in aliases:
            _ALIASES[a.lower()] = key
        return config_fn

    return decorator


def _ensure_loaded() -> None:
    # The modules register their backbones on import; importing them here keeps
    # ``import kface_cli.models.registry`` free of torch for callers that only need names.
    from kface_cli.models import iresnet, mobilefacenet  # noqa: F401


def backbone_names() -> str:
    """``"mbf, mbf_small, r18, ..."``: every backbone, for help texts and messages (no torch import)."""
    return ", ".join(BACKBONE_NAMES)


def list_backbones(*, with_aliases: bool = False) -> list[str] | dict[str, tuple[str, ...]]:
    """Canonical backbone names, sorted (``with_aliases=True``: name -> aliases)."""
    _ensure_loaded()

    def order(n: str) -> tuple[int, int, str]:
        digits = "".join(c for c in n if c.isdigit())
        return (0 if n.startswith("mbf") else 1, int(digits) if n.startswith("r") and digits else 0, n)

    names = sorted(_BACKBONES, key=order)
    if with_aliases:
        return {n: _BACKBONES[n].aliases for n in names}
    return names


def canonical_name(name: str) -> str:
    """``"iresnet50"`` -> ``"r50"``; unknown names raise :class:`KFaceError` listing the valid ones."""
    _ensure_loaded()
    key = str(name).strip().lower()
    if key not in _ALIASES:
        valid = ", ".join(list_backbones())
        aliases = ", ".join(sorted(a for a in _ALIASES if a not in _BACKBONES))
        raise KFaceError(f"unknown network {name!r}", hint=f"Valid networks: {valid} (aliases: {aliases}).")
    return _ALIASES[key]


def backbone_config(name: str, embedding_size: int = DEFAULT_EMBEDDING_SIZE, **overrides: Any) -> Any:
    """The config dataclass ``get_backbone`` would build from (frozen; stored with checkpoints)."""
    entry = _BACKBONES[canonical_name(name)]
    try:
        return entry.config_factory(embedding_size=embedding_size, **overrides)
    except TypeError as e:  # unknown keyword: dataclasses.replace / constructor reject it
        raise KFaceError(f"bad option for network {entry.name!r}: {e}", hint=_valid_fields(entry)) from None


def _valid_fields(entry: _Entry) -> str:
    cfg = entry.config_factory(embedding_size=DEFAULT_EMBEDDING_SIZE)
    return "Valid options: " + ", ".join(f.name for f in dataclasses.fields(cfg)) + "."


def get_backbone(name: str, embedding_size: int = DEFAULT_EMBEDDING_SIZE, **overrides: Any) -> torch.nn.Module:
    """Build a backbone by name: input (N, 3, 112, 112) RGB in [-1, 1], output (N, embedding_size).

    The output is NOT L2-normalised (insightface convention). ``overrides`` are fields of the
    backbone's config dataclass, e.g. ``fp16=True`` (layers before ``fc`` under autocast) or, for
    MobileFaceNet, ``scale=1``. An unknown field raises :class:`KFaceError` naming the valid ones.
    To build cheaply for shape checks: ``with torch.device("meta"): get_backbone("r200")``.
    """
    if int(embedding_size) <= 0:
        raise KFaceError(f"embedding size must be positive, got {embedding_size}")
    cfg = backbone_config(name, int(embedding_size), **overrides)
    return cfg.build()


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}


def infer_embedding_size(state_dict: Mapping[str, Any]) -> int:
    """The output width of a backbone ``state_dict`` (from its final BatchNorm1d)."""
    for key in ("features.weight", "features.layers.3.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    last = None  # another layout: the width of its last BatchNorm
    for k, v in state_dict.items():
        if k.endswith("running_mean") and getattr(v, "ndim", 0) == 1:
            last = int(v.shape[0])
    if last is not None:
        return last
    raise ModelMismatchError(
        "cannot tell the embedding size of this state_dict: no 'features' BatchNorm found",
        hint="Is this an insightface/kface backbone (not a full checkpoint or a head)?",
    )


def infer_network(state_dict: Mapping[str, Any]) -> str:
    """Which registered backbone ``state_dict`` belongs to (keys and shapes must match exactly).

    Raises :class:`ModelMismatchError` when none matches, naming the closest candidate and its
    first differing key so that a user can see whether it is a wrong file or a wrong network.
    """
    import torch

    _ensure_loaded()
    target = _shapes(state_dict)
    if not target:
        raise ModelMismatchError("this file holds no tensors; expected a backbone state_dict")
    emb = infer_embedding_size(state_dict)
    best: tuple[int, str, str] | None = None
    for name in list_backbones():
        with torch.device("meta"):
            try:
                model = get_backbone(name, embedding_size=emb)
            except KFaceError:
                continue
        shapes = _shapes(model.state_dict())
        if shapes == target:
            return name
        diff = sorted(set(shapes) ^ set(target)) or sorted(k for k in shapes if shapes[k] != target[k])
        if best is None or len(diff) < best[0]:
            best = (len(diff), name, diff[0])
    hint = f"Closest: {best[1]} ({best[0]} differing keys, e.g. {best[2]!r})." if best else ""
    raise ModelMismatchError(
        "this state_dict matches none of the known backbones " + ", ".join(list_backbones()), hint=hint
    )
