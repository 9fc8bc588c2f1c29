"""Synthetic identities: the stable features of each K-Face ID (face shape, skin, hair, brows,
eyes, nose, mouth, clothes), drawn deterministically from the ID and a seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from kface_cli.errors import InputError

_SKIN_LIGHT = np.array([0.69, 0.78, 0.93])  # BGR albedo, fair
_SKIN_DARK = np.array([0.30, 0.42, 0.62])  # BGR albedo, deep
_HAIR_COLOURS = {
    "black": (0.07, 0.07, 0.08), "dark brown": (0.10, 0.15, 0.22), "brown": (0.15, 0.26, 0.40),
    "auburn": (0.12, 0.22, 0.50), "blond": (0.38, 0.62, 0.78), "grey": (0.55, 0.56, 0.58),
}  # fmt: skip
_EYE_COLOURS = {
    "dark brown": (0.08, 0.14, 0.22), "brown": (0.12, 0.25, 0.40), "hazel": (0.20, 0.40, 0.45),
    "blue": (0.62, 0.42, 0.22), "green": (0.30, 0.48, 0.25), "grey": (0.50, 0.48, 0.45),
}  # fmt: skip
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bangs", "side-part", "receding", "buzz", "bob")


@dataclass(frozen=True)
class Identity:
    """The stable features of one synthetic person (lengths in image heights)."""

    id: str
    a: float  # cranium half-width
    b: float  # cranium half-height
    c: float  # cranium half-depth
    jaw_w: float  # jaw width / a
    jaw_h: float  # jaw half-height / b
    jaw_drop: float  # jaw centre below cranium centre / b
    centre: tuple[float, float]  # head centre offset from the image centre (x, y)
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: str
    hairline: float  # front hairline height / b (larger: higher forehead)
    hair_volume: float
    part: float  # hairline tilt (side part)
    eye_colour: tuple[float, float, float]
    eye_x: float  # eye centre distance from the mid-line / a
    eye_y: float  # eye height / b (negative: above the centre)
    eye_rx: float  # eye half-width / a
    eye_ry: float  # eye half-height / eye half-width
    brow_gap: float  # brow above eye / b
    brow_thick: float  # / b
    brow_arch: float  # / b
    brow_slope: float  # outer end up (+) or down (-), / b
    brow_len: float  # half-length / eye half-width
    nose_y: float  # nose tip height / b
    nose_len: float  # protrusion / c
    nose_w: float  # half-width / a
    nose_h: float  # half-length / b
    mouth_y: float  # / b
    mouth_w: float  # half-width / a
    lip_upper: float  # / b
    lip_lower: float  # / b
    lip_colour: tuple[float, float, float]
    ear_y: float  # / b
    ear_size: float  # / b
    mole: tuple[float, float, float] | None  # (x / a, y / b, radius / b)
    beard: float  # 0 none, else darkness of beard/stubble
    clothes: tuple[float, float, float]
    frame_colour: tuple[float, float, float]


def identity_ids(n: int, seed: int = 0) -> list[str]:
    """``n`` K-Face-like IDs (YYMMDD + device + sequence, e.g. ``19062531``), sorted, deterministic."""
    if n < 1:
        raise InputError(f"need at least one identity, got {n}")
    rng = np.random.default_rng([seed, 7919])
    start = date(2019, 6, 25) + timedelta(days=int(rng.integers(0, 60)))
    ids: list[str] = []
    day = 0
    while len(ids) < n:
        device = int(rng.integers(1, 5))
        per_day = int(rng.integers(3, 10))
        d = start + timedelta(days=day)
        for seq in range(1, per_day + 1):
            ids.append(f"{d:%y%m%d}{device}{seq}")
            if len(ids) == n:
                break
        day += int(rng.integers(1, 3))
    return ids


def keyed_rng(*keys: object) -> np.random.Generator:
    """A generator seeded from any keys (stable across runs and platforms)."""
    digest = hashlib.sha256("|".join(str(k) for k in keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pick(rng: np.random.Generator, table: dict) -> tuple[float, float, float]:
    base = np.array(table[list(table)[int(rng.integers(len(table)))]])
    return tuple(np.clip(base * rng.uniform(0.88, 1.12, 3), 0, 1).round(4).tolist())


def make_identity(identity_id: str, seed: int = 0) -> Identity:
    """Draw the stable features of one identity (deterministic from the ID and seed)."""
    r = keyed_rng("identity", seed, identity_id)
    u = r.uniform
    tone = u(0, 1) ** 1.3
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone
    skin = np.clip(skin * u(0.94, 1.06, 3), 0, 1)
    style = HAIR_STYLES[int(r.integers(len(HAIR_STYLES)))]
    hair = _pick(r, _HAIR_COLOURS)
    lip = np.clip(skin * np.array([0.62, 0.58, 0.95]) * u(0.85, 1.05), 0, 1)
    mole = (u(-0.55, 0.55), u(-0.1, 0.55), u(0.025, 0.045)) if r.random() < 0.5 else None
    return Identity(
        id=identity_id,
        a=u(0.135, 0.17),
        b=u(0.18, 0.215),
        c=u(0.16, 0.19),
        jaw_w=u(0.68, 0.98),
        jaw_h=u(0.62, 0.82),
        jaw_drop=u(0.28, 0.45),
        centre=(u(-0.03, 0.03), u(-0.06, 0.0)),
        skin=tuple(skin.round(4).tolist()),
        hair=hair,
        hair_style=style,
        hairline=u(0.35, 0.6) if style != "receding" else u(0.72, 0.85),
        hair_volume=u(1.04, 1.12) if style != "buzz" else 1.015,
        part=u(-0.35, 0.35) if style == "side-part" else u(-0.06, 0.06),
        eye_colour=_pick(r, _EYE_COLOURS),
        eye_x=u(0.33, 0.45),
        eye_y=u(-0.2, -0.05),
        eye_rx=u(0.16, 0.24),
        eye_ry=u(0.38, 0.6),
        brow_gap=u(0.1, 0.2),
        brow_thick=u(0.03, 0.075),
        brow_arch=u(0.0, 0.06),
        brow_slope=u(-0.05, 0.06),
        brow_len=u(1.1, 1.6),
        nose_y=u(0.16, 0.32),
        nose_len=u(0.12, 0.26),
        nose_w=u(0.12, 0.22),
        nose_h=u(0.14, 0.24),
        mouth_y=u(0.52, 0.68),
        mouth_w=u(0.26, 0.42),
        lip_upper=u(0.025, 0.05),
        lip_lower=u(0.03, 0.065),
        lip_colour=tuple(lip.round(4).tolist()),
        ear_y=u(-0.05, 0.12),
        ear_size=u(0.22, 0.32),
        mole=mole,
        beard=u(0.25, 0.6) if r.random() < 0.25 else 0.0,
        clothes=tuple(u(0.1, 0.9, 3).round(4).tolist()),
        frame_colour=tuple(u(0.0, 0.35, 3).round(4).tolist()),
    )
