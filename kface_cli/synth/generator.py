"""Synthetic K-Face: identities drawn in the dataset's exact layout, for the demo, tests and benchmarks.

The real K-Face cannot be bundled, so kface ships a generator that writes the same files::

    <root>/High_Resolution/19062531.zip     864x576 JPEGs
    <root>/Middle_Resolution/19062531.zip   346x230
    <root>/Low_Resolution/19062531.zip      173x115
      inside: S001/L1/E01/C7.jpg (+ C7.txt for S001 with lights L1, L3, L6, L7)

Each annotation holds 7 points and then 5, 6 or 7 boxes depending on the camera, exactly as
:mod:`kface_cli.dataset.annotation` documents.

How a face is drawn
-------------------
Every identity is a small 3D head: ellipsoids for cranium, jaw, nose, ears, neck, shoulders and a
hair shell, ray-cast orthographically (numpy, no OpenGL). Identity lives in stable features: head
and jaw proportions, skin, hair and eye colours, hair style and hairline, eyebrow shape and
thickness, eye spacing and size, nose size and position, mouth width and lips, an optional mole
and beard. The conditions change the pixels a lot, as in the real set:

- light (L): brightness from the code's lux (L7 is nearly black) and direction (all lamps, from
  above/below, from the sides); Lambertian shading on the 3D surface, fixed to the subject;
- expression (E): E02 broad smile (wide open mouth, raised corners, squinting eyes), E03 frown
  (corners down, brows lowered and drawn together);
- camera (C): yaw and pitch from the code's angles, applied to the whole head, so landmarks and
  boxes move consistently; in the profiles C1, C2, C12, C13 both eyes project to nearly one point;
- per image: random backdrop, small head-pose, scale and position jitter, white balance,
  exposure, sensor noise, blur, JPEG compression, and +-1 pixel annotation noise.

Everything is deterministic from ``seed``: the same identity, codes and seed give the same
scene at every resolution (noise differs), and the same bytes on every run.

How hard it is
--------------
Raw pixels are a poor face descriptor here, as on real faces. On ``sample_data/`` (40 identities,
Middle, the tutorial selection S001 x L1,L3 x E01-E03 x C6-C9: 960 aligned 112x112 crops),
cosine similarity of the flattened crops reaches **68.2% +- 1.2%** 10-fold verification
accuracy over all 11,040 same-identity pairs and as many different-identity pairs (chance is
50%); measure it again with ``python benchmarks/bench_pixel_baseline.py``. Identity is still
learnable: a MobileFaceNet trained from scratch on the 30 training identities for 4 minutes on 2
CPU cores (71 steps of 64, CosFace-style margin) verified the 10 held-out identities at 96.0% on
the tutorial conditions (pixels: 67.9%) and 91.6% on all conditions including the dark L7 and the
C1 profile (pixels: 66.3%), measured on a set made with this generator and slightly stronger
sensor noise. Identity is in the shapes and colours of stable parts, not in where the light falls.

Speed: about 0.1 s per Middle image on one core (rendered at 2x and downsampled), so the bundled
set (1,350 images) takes a few minutes; ``workers`` renders identities in parallel.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from kface_cli.choices import GridPreset
from kface_cli.dataset import codes as kc
from kface_cli.dataset.annotation import format_annotation
from kface_cli.defaults import SAMPLE_IDENTITIES, auto_workers
from kface_cli.errors import InputError
from kface_cli.workspace import DEFAULT_RESOLUTION, normalise_resolution

#: Image sizes (width, height) per resolution, as in the real dataset.
IMAGE_SIZES: dict[str, tuple[int, int]] = {"High": (864, 576), "Middle": (346, 230), "Low": (173, 115)}
#: Render at this multiple of the output size and downsample (anti-aliasing).
SUPERSAMPLE: dict[str, int] = {"High": 1, "Middle": 2, "Low": 2}
JPEG_QUALITY = 75
#: Pixels per identity length unit, as a multiple of the image height (a face box is about half
#: the image height, as in K-Face).
HEAD_SCALE = 1.45
#: Fixed zip timestamps, so archives are byte-identical for a given seed.
ZIP_DATE = (2019, 6, 25, 0, 0, 0)

#: Extra conditions of the "sample" grid, beyond the tutorial selection: dark lights, wider and
#: profile angles, an accessory (one image each, E01, frontal unless stated).
SAMPLE_EXTRAS: tuple[tuple[str, str, str, str], ...] = (
    ("S001", "L6", "E01", "C7"),
    ("S001", "L7", "E01", "C7"),
    ("S001", "L1", "E01", "C5"),
    ("S001", "L1", "E01", "C10"),
    ("S001", "L1", "E01", "C1"),
    ("S002", "L1", "E01", "C7"),
)


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------
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


def _rng(*keys: object) -> np.random.Generator:
    """A generator seeded from any keys (stable across runs and platforms)."""
    digest = hashlib.sha256("|".join(str(k) for k in keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pick(rng: np.random.Generator, table: dict) -> tuple[float, float, float]:
    base = np.array(table[list(table)[int(rng.integers(len(table)))]])
    return tuple(np.clip(base * rng.uniform(0.88, 1.12, 3), 0, 1).round(4).tolist())


def make_identity(identity_id: str, seed: int = 0) -> Identity:
    """Draw the stable features of one identity (deterministic from the ID and seed)."""
    r = _rng("identity", seed, identity_id)
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


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def _rot_x(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


def _rot_y(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def _rot_z(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def head_rotation(pitch: float, yaw: float, roll: float = 0.0) -> np.ndarray:
    """Head frame -> camera frame for a camera at (pitch, yaw) degrees.

    Frames: x to the image's right, y down, z towards the camera. A camera at yaw +90 sees the
    face's right side with the nose pointing to the image's left (as K-Face's C1); a camera at
    pitch +30 is above the face and looks down at the forehead.
    """
    return _rot_z(roll) @ _rot_x(-pitch) @ _rot_y(-yaw)


@dataclass(frozen=True)
class _Ellipsoid:
    name: str
    centre: np.ndarray  # (3,) head frame
    axes: np.ndarray  # (3,) semi-axes
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # object -> head frame


def _surface_z(ell: _Ellipsoid, x: float, y: float) -> float:
    """Front (max z) surface point of an axis-aligned ellipsoid at head-frame (x, y); nan if none."""
    q = 1 - ((x - ell.centre[0]) / ell.axes[0]) ** 2 - ((y - ell.centre[1]) / ell.axes[1]) ** 2
    return float(ell.centre[2] + ell.axes[2] * math.sqrt(q)) if q >= 0 else float("nan")


@dataclass(frozen=True)
class _Expression:
    mouth_w: float = 1.0  # mouth half-width factor
    lift: float = 0.0  # corner lift / b (+: up)
    open: float = 0.0  # opening / b
    eye_open: float = 1.0
    brow_raise: float = 0.0  # / b (+: up)
    brow_inner: float = 0.0  # inner ends down / b (frown)


_EXPRESSIONS = {
    "E01": _Expression(),
    "E02": _Expression(mouth_w=1.22, lift=0.07, open=0.055, eye_open=0.62, brow_raise=0.02),
    "E03": _Expression(mouth_w=0.9, lift=-0.045, open=0.0, eye_open=0.8, brow_raise=-0.025, brow_inner=0.05),
}


class _Head:
    """All 3D parts of one identity with one expression and accessory, in head coordinates."""

    def __init__(self, ident: Identity, expr: _Expression, acc: str):
        self.i = ident
        self.e = expr
        self.acc = acc
        a, b, c = ident.a, ident.b, ident.c
        self.cranium = _Ellipsoid("cranium", np.array([0.0, 0.0, 0.0]), np.array([a, b, c]))
        self.jaw = _Ellipsoid(
            "jaw", np.array([0.0, b * ident.jaw_drop, c * 0.02]), np.array([a * ident.jaw_w, b * ident.jaw_h, c * 0.93])
        )
        # eyes and mouth on the face surface
        self.eye_x, self.eye_y = a * ident.eye_x, b * ident.eye_y
        self.eye_rx = a * ident.eye_rx
        self.eye_ry = self.eye_rx * ident.eye_ry * expr.eye_open
        self.mouth_y = b * ident.mouth_y
        self.mouth_w = a * ident.mouth_w * expr.mouth_w
        # nose: an ellipsoid tilted so that its lower front end is the tip
        ny = b * ident.nose_y
        zs = self.face_z(0.0, ny)
        nl, nw, nh = c * ident.nose_len, a * ident.nose_w, b * ident.nose_h
        tilt = _rot_x(-22.0)
        centre = np.array([0.0, ny - nh * 0.55, zs - nl * 0.25])
        self.nose = _Ellipsoid("nose", centre, np.array([nw, nh, nl]), tilt)
        ear_h = b * ident.ear_size
        ear_y = b * ident.ear_y
        self.ears = [
            _Ellipsoid(
                f"ear_{side}", np.array([sx * a * 0.96, ear_y, -c * 0.08]), np.array([a * 0.13, ear_h * 0.5, c * 0.22])
            )
            for side, sx in (("left", -1), ("right", 1))
        ]
        self.neck = _Ellipsoid("neck", np.array([0.0, b * 1.15, -c * 0.25]), np.array([a * 0.52, b * 0.7, c * 0.55]))
        self.torso = _Ellipsoid("torso", np.array([0.0, b * 2.25, -c * 0.3]), np.array([a * 2.7, b * 0.8, c * 1.2]))
        v = ident.hair_volume
        self.hair = _Ellipsoid(
            "hair", np.array([0.0, -b * 0.04 * v, -c * 0.04]), np.array([a * v, b * v, c * (v + 0.02)])
        )
        self.long_hair = None
        if ident.hair_style in ("long", "bob"):
            length = 1.05 if ident.hair_style == "long" else 0.7
            self.long_hair = _Ellipsoid(
                "long_hair",
                np.array([0.0, b * (0.1 + length * 0.35), -c * 0.3]),
                np.array([a * 1.13 * v, b * length, c * 0.8]),
            )
        self.hat = None
        if acc in ("S005", "S006"):
            self.hat = _Ellipsoid("hat", np.array([0.0, -b * 0.42, -c * 0.02]), np.array([a * 1.17, b * 0.72, c * 1.2]))

    # --- surface helpers ---------------------------------------------------------------------
    def face_z(self, x: float, y: float) -> float:
        zs = [_surface_z(e, x, y) for e in (self.cranium, self.jaw)]
        zs = [z for z in zs if not math.isnan(z)]
        return max(zs) if zs else 0.0

    def objects(self) -> list[_Ellipsoid]:
        objs = [self.torso, self.neck, self.cranium, self.jaw, self.nose, *self.ears, self.hair]
        if self.long_hair is not None:
            objs.append(self.long_hair)
        if self.hat is not None:
            objs.append(self.hat)
        return objs

    def hair_limit(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Hair covers head-frame points with y below this limit (y grows downwards)."""
        i, b, c, a = self.i, self.i.b, self.i.c, self.i.a
        front = -b * i.hairline + b * 0.35 * (x / a) ** 2 + b * i.part * (x / a)
        if i.hair_style == "bangs":
            front = -b * (0.3 + 0.1 * (x / a) ** 2)
        side = np.full_like(x, b * (i.ear_y - i.ear_size * 0.45))
        back = np.full_like(x, b * 0.45)
        if i.hair_style == "buzz":
            front = front - b * 0.08
        wf = np.clip(z / c * 2.2 - 0.2, 0, 1)
        wb = np.clip(-z / c * 2.0, 0, 1)
        return wf * front + (1 - wf) * ((1 - wb) * side + wb * back)

    def landmarks(self) -> np.ndarray:
        """(7, 2+1) head-frame points: nose tip, eye L, eye R, mouth L, mouth R, ear L, ear R."""
        n = self.nose
        tip = n.centre + n.rot @ (n.axes * (n.axes * n.rot.T[:, 2])) / np.linalg.norm(n.axes * n.rot.T[:, 2])
        pts = [tip]
        for sx in (-1, 1):
            x = sx * self.eye_x
            pts.append(np.array([x, self.eye_y, self.face_z(x, self.eye_y)]))
        for sx in (-1, 1):
            x = sx * self.mouth_w
            y = self.mouth_y - self.e.lift * self.i.b
            pts.append(np.array([x, y, self.face_z(x, y)]))
        for ear in self.ears:
            pts.append(ear.centre + np.array([np.sign(ear.centre[0]) * ear.axes[0] * 0.3, 0, 0]))
        return np.array(pts)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderedFace:
    image: np.ndarray  # (H, W, 3) BGR uint8
    points: np.ndarray  # (7, 2) float, K-Face order
    boxes: dict  # visible parts, (x, y, w, h)


def _light_model(light: str) -> tuple[float, float, np.ndarray]:
    """(brightness, ambient share, unit direction in head frame) for a light code."""
    spec = kc.LIGHTS[light]
    brightness = max(spec.lux / 1000.0, 0.0) ** 0.45
    if spec.lux == 0:
        brightness = 0.05  # L7: only stray light reaches the sensor
    if spec.axis == "all":
        return brightness, 0.5, _unit(np.array([0.0, -0.35, 1.0]))
    t = math.radians(spec.angle)
    if spec.axis == "vertical":
        d = np.array([0.0, -math.sin(t), math.cos(t)])
    else:
        d = np.array([math.sin(t), -0.2, math.cos(t)])
    return brightness * 1.2, 0.22, _unit(d)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _backdrop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    grey = rng.uniform(0.25, 0.85)
    base = np.clip(grey * rng.uniform(0.85, 1.15, 3), 0, 1)
    small = np.empty((6, 9, 3))
    small[:] = base
    gy, gx = np.mgrid[0:6, 0:9]
    grad = rng.uniform(-0.25, 0.25, 2)
    small *= (1 + grad[0] * (gy / 5 - 0.5) + grad[1] * (gx / 8 - 0.5))[..., None]
    small += rng.normal(0, 0.03, (6, 9, 1)) + rng.normal(0, 0.01, small.shape)
    return cv2.resize(np.clip(small, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _paint_face(head: _Head, p: np.ndarray, albedo: np.ndarray) -> None:
    """Paint skin features onto cranium/jaw/nose points ``p`` (N, 3) -> ``albedo`` (N, 3) in place."""
    i, e, b, a = head.i, head.e, head.i.b, head.i.a
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = z > 0
    # beard / stubble around mouth and chin
    if i.beard > 0:
        m = (
            front
            & (y > head.mouth_y - b * 0.12)
            & (np.abs(x) < a * 0.75)
            & (y > head.mouth_y - b * 0.25 + (x / a) ** 2 * b * 0.3)
        )
        albedo[m] = albedo[m] * (1 - i.beard) + np.array(i.hair) * i.beard
    # mole
    if i.mole is not None:
        mx, my, mr = i.mole
        m = front & ((x - mx * a) ** 2 + (y - my * b) ** 2 < (mr * b) ** 2)
        albedo[m] = np.array([0.12, 0.16, 0.22])
    # eyebrows
    for sx in (-1, 1):
        xc = sx * head.eye_x
        half = head.eye_rx * i.brow_len
        u = (x - xc) / half  # -1..1 along the brow (sx * u > 0 is the outer end)
        outer = sx * u
        y_mid = head.eye_y - b * (i.brow_gap + e.brow_raise) - head.eye_ry * 0.6
        y_c = y_mid - b * i.brow_arch * (1 - u**2) - b * i.brow_slope * outer + b * e.brow_inner * np.clip(-outer, 0, 1)
        thick = b * i.brow_thick * (1 - 0.45 * np.clip(outer, 0, 1))
        m = front & (np.abs(u) <= 1) & (np.abs(y - y_c) < thick / 2)
        albedo[m] = np.array(i.hair) * 0.85
    # eyes
    for sx in (-1, 1):
        ex = sx * head.eye_x
        d = ((x - ex) / head.eye_rx) ** 2 + ((y - head.eye_y) / head.eye_ry) ** 2
        lid = front & (d < 1.45) & (d >= 1.0) & (y < head.eye_y)
        albedo[lid] = albedo[lid] * 0.55
        eye = front & (d < 1.0)
        albedo[eye] = np.array([0.88, 0.9, 0.92])
        ri = head.eye_rx * 0.48
        r2 = (x - ex) ** 2 + (y - head.eye_y) ** 2
        iris = eye & (r2 < ri**2)
        albedo[iris] = np.array(i.eye_colour)
        albedo[eye & (r2 < (ri * 0.45) ** 2)] = np.array([0.03, 0.03, 0.03])
    # mouth
    u = x / head.mouth_w
    inside = front & (np.abs(u) < 1)
    y_c = head.mouth_y - b * e.lift * u**2
    shape = np.sqrt(np.clip(1 - u**2, 0, 1))
    half_open = b * e.open * shape / 2
    upper = inside & (y < y_c - half_open) & (y > y_c - half_open - b * i.lip_upper * shape - b * 0.006)
    lower = inside & (y >= y_c + half_open) & (y < y_c + half_open + b * i.lip_lower * shape + b * 0.006)
    gap = inside & (y >= y_c - half_open) & (y < y_c + half_open)
    albedo[upper | lower] = np.array(head.i.lip_colour)
    if e.open > 0:
        teeth = gap & (y < y_c + half_open * 0.1)
        albedo[gap] = np.array([0.08, 0.06, 0.12])
        albedo[teeth] = np.array([0.85, 0.88, 0.9])
    else:
        line = inside & (np.abs(y - y_c) < b * 0.006)
        albedo[line] = np.array(head.i.lip_colour) * 0.5
    # glasses (S002 thin, S003/S006 horn-rimmed, S004 sunglasses): decals around the eyes
    if head.acc in ("S002", "S003", "S004", "S006"):
        thick = {"S002": 0.018, "S003": 0.04, "S004": 0.03, "S006": 0.04}[head.acc] * b
        grx, gry = head.eye_rx * 1.45, head.eye_rx * 1.05
        colour = np.array(i.frame_colour) if head.acc != "S002" else np.array([0.55, 0.55, 0.6])
        for sx in (-1, 1):
            ex = sx * head.eye_x
            d = np.sqrt(((x - ex) / grx) ** 2 + ((y - head.eye_y) / gry) ** 2)
            if head.acc == "S004":
                lens = front & (d < 1)
                albedo[lens] = albedo[lens] * 0.12
            ring = front & (d >= 1) & (d < 1 + thick / gry)
            albedo[ring] = colour
        bridge = front & (np.abs(x) < head.eye_x - grx * 0.95) & (np.abs(y - (head.eye_y - gry * 0.3)) < thick / 2)
        albedo[bridge] = colour
        arm = (np.abs(x) > head.eye_x + grx) & (np.abs(y - head.eye_y + gry * 0.2) < thick / 2) & (z > -head.i.c * 0.1)
        albedo[arm] = colour


def render_face(ident: Identity, acc: str, light: str, expr: str, cam: str, res: str, seed: int = 0) -> RenderedFace:
    """Render one image of ``ident`` under the given codes at a K-Face resolution."""
    import cv2

    width, height = IMAGE_SIZES[res]
    ss = SUPERSAMPLE[res]
    W, H = width * ss, height * ss
    scene = _rng("scene", seed, ident.id, acc, light, expr, cam)  # same scene at every resolution
    noise_rng = _rng("noise", seed, ident.id, acc, light, expr, cam, res)

    camera = kc.CAMERAS[cam]
    strength = scene.uniform(0.8, 1.15)  # how strongly this take shows the expression
    base = _EXPRESSIONS[expr]
    expression = _Expression(
        mouth_w=1 + (base.mouth_w - 1) * strength,
        lift=base.lift * strength,
        open=base.open * strength,
        eye_open=1 - (1 - base.eye_open) * strength,
        brow_raise=base.brow_raise * strength,
        brow_inner=base.brow_inner * strength,
    )
    head = _Head(ident, expression, acc)
    rot = head_rotation(camera.pitch + scene.normal(0, 2.0), camera.yaw + scene.normal(0, 2.5), scene.normal(0, 3.0))
    scale = H * HEAD_SCALE * scene.uniform(0.96, 1.04)  # pixels per unit
    centre = np.array(
        [W / 2 + (ident.centre[0] + scene.normal(0, 0.01)) * H, H / 2 + (ident.centre[1] + scene.normal(0, 0.01)) * H]
    )
    view = rot.T @ np.array([0.0, 0.0, 1.0])  # direction to the camera, head frame

    # ray casting, per object inside its projected bounding box: pixel (u, v) -> camera ray
    # (x, y, z); its head-frame point is rot.T @ (x, y, z), the visible hit the one with the largest z
    P = H * W
    best_z = np.full(P, -np.inf)
    best_obj = np.full(P, -1)
    best_p = np.zeros((P, 3))
    objects = head.objects()
    for k, obj in enumerate(objects):
        m = rot @ obj.rot  # object frame -> camera frame
        cx, cy = (rot @ obj.centre)[:2] * scale + centre
        rx = math.sqrt(((m[0] * obj.axes) ** 2).sum()) * scale
        ry = math.sqrt(((m[1] * obj.axes) ** 2).sum()) * scale
        u0, u1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, W)
        v0, v1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, H)
        if u0 >= u1 or v0 >= v1:
            continue
        vs, us = np.mgrid[v0:v1, u0:u1]
        idx = (vs * W + us).ravel()
        xy = np.stack(
            [(us.ravel() + 0.5 - centre[0]) / scale, (vs.ravel() + 0.5 - centre[1]) / scale], axis=-1
        )  # (n, 2)
        origin = xy @ rot[:2, :]  # (n, 3) head frame, at z_cam = 0
        inv = obj.rot.T
        q0 = ((origin - obj.centre) @ inv.T) / obj.axes  # (n, 3) unit-sphere coordinates
        dq = (inv @ view) / obj.axes
        aa = float(dq @ dq)
        bb = q0 @ dq
        disc = bb * bb - aa * ((q0 * q0).sum(1) - 1)
        hit = disc >= 0
        t = np.where(hit, (-bb + np.sqrt(np.where(hit, disc, 0))) / aa, 0.0)
        p = origin + t[:, None] * view
        if obj.name == "hair":
            hit &= p[:, 1] < head.hair_limit(p[:, 0], p[:, 2])
        elif obj.name == "long_hair":
            hit &= p[:, 2] < ident.c * 0.15
        elif obj.name == "hat":
            hit &= p[:, 1] < -ident.b * 0.3
        closer = hit & (t > best_z[idx])
        sel = idx[closer]
        best_z[sel] = t[closer]
        best_obj[sel] = k
        best_p[sel] = p[closer]

    # albedo per object, on the hit pixels only (compact arrays)
    hit_idx = np.flatnonzero(best_obj >= 0)
    obj_of = best_obj[hit_idx]
    pts_all = best_p[hit_idx]
    albedo = np.zeros((len(hit_idx), 3))
    skin = np.array(ident.skin)
    for k, obj in enumerate(objects):
        m = obj_of == k
        if obj.name in ("hair", "long_hair"):
            albedo[m] = ident.hair
        elif obj.name == "hat":
            albedo[m] = np.array(ident.clothes)[::-1] * 0.8
        elif obj.name == "torso":
            albedo[m] = ident.clothes
        elif obj.name == "neck" or obj.name.startswith("ear"):
            albedo[m] = skin * 0.95
        else:
            albedo[m] = skin
    k_cranium, k_nose = objects.index(head.cranium), objects.index(head.nose)
    face_mask = np.isin(obj_of, [k_cranium, objects.index(head.jaw), k_nose])
    pts = pts_all[face_mask]
    alb = albedo[face_mask]
    # hair covers the cranium above the hairline even where the shell is cut away
    covered = (obj_of[face_mask] == k_cranium) & (pts[:, 1] < head.hair_limit(pts[:, 0], pts[:, 2]))
    _paint_face(head, pts, alb)
    alb[covered] = ident.hair
    nose_mask = obj_of[face_mask] == k_nose
    if nose_mask.any():  # nostrils
        q = ((pts[nose_mask] - head.nose.centre) @ head.nose.rot) / head.nose.axes
        nostril = (q[:, 1] > 0.55) & (np.abs(q[:, 0]) > 0.2) & (np.abs(q[:, 0]) < 0.75) & (q[:, 2] > 0.2)
        sub = alb[nose_mask]
        sub[nostril] *= 0.45
        alb[nose_mask] = sub
    albedo[face_mask] = alb

    # shading: Lambert with the light fixed to the subject, normals in head frame
    brightness, ambient, light_dir = _light_model(light)
    light_dir = _unit(light_dir + scene.normal(0, 0.08, 3))
    normals = np.zeros_like(pts_all)
    for k, obj in enumerate(objects):
        m = obj_of == k
        if m.any():
            q = ((pts_all[m] - obj.centre) @ obj.rot) / obj.axes**2
            normals[m] = (q @ obj.rot.T) / np.linalg.norm(q, axis=1, keepdims=True)
    shade = ambient + (1 - ambient) * np.clip(normals @ light_dir, 0, 1)

    img = _backdrop(scene, H, W).reshape(-1, 3)
    img *= 0.55 + 0.45 * scene.uniform(0.7, 1.0)
    img[hit_idx] = albedo * shade[:, None]
    img = img.reshape(H, W, 3)
    # camera: exposure, white balance, downsample, blur, noise, gamma
    img *= np.float32(brightness * scene.uniform(0.85, 1.15)) * scene.uniform(0.9, 1.1, 3).astype(np.float32)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA) if ss > 1 else img
    # sensor noise, mostly smoothed by the lens blur (sharp noise would bloat the JPEGs)
    img = img + noise_rng.normal(0, scene.uniform(0.004, 0.012), img.shape).astype(np.float32)
    sigma = scene.uniform(0.5, 1.1) * height / 230
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = img + noise_rng.normal(0, 0.002, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1) ** scene.uniform(0.85, 1.15)
    image = (img * 255 + 0.5).astype(np.uint8)

    # annotation: project landmarks and parts
    def project(p3: np.ndarray) -> np.ndarray:
        cam_xy = (np.atleast_2d(p3) @ rot.T)[:, :2]
        return (cam_xy * scale + centre) / ss

    points = project(head.landmarks()) + scene.normal(0, 0.6, (7, 2)) * height / 230
    boxes = _boxes(head, project, view, cam)
    return RenderedFace(image=image, points=points, boxes=boxes)


def _bbox(pts2: np.ndarray, margin: float = 0.0) -> tuple[float, float, float, float]:
    x0, y0 = pts2.min(0)
    x1, y1 = pts2.max(0)
    w, h = x1 - x0, y1 - y0
    return (x0 - margin * w, y0 - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin))


def _ellipse_samples(ell: _Ellipsoid, n: int = 16) -> np.ndarray:
    th, ph = np.meshgrid(np.linspace(0, math.pi, n), np.linspace(0, 2 * math.pi, n * 2, endpoint=False))
    u = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    return ell.centre + (u * ell.axes) @ ell.rot.T


def _boxes(head: _Head, project, view: np.ndarray, cam: str) -> dict:
    i, b = head.i, head.i.b
    t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    boxes: dict[str, tuple[float, float, float, float]] = {}
    # face: visible skin from brows to chin, made square like K-Face's
    face_pts = []
    for ell in (head.cranium, head.jaw):
        s = _ellipse_samples(ell, 24)
        normal = (s - ell.centre) / ell.axes**2
        keep = (s[:, 1] > head.eye_y - b * 0.45) & ((normal @ view) > 0) & (s[:, 2] > -i.c * 0.35)
        face_pts.append(s[keep])
    fp = project(np.concatenate(face_pts))
    x, y, w, h = _bbox(fp)
    side = max(w, h)
    boxes["face"] = (x + w / 2 - side / 2, y + h / 2 - side / 2, side, side)
    for name, sx in (("eye_left", -1), ("eye_right", 1)):
        ex = sx * head.eye_x
        pts = np.array(
            [[ex + head.eye_rx * 1.2 * math.cos(a_), head.eye_y + head.eye_ry * 1.6 * math.sin(a_)] for a_ in t]
        )
        boxes[name] = _bbox(project(np.array([[px, py, head.face_z(px, py)] for px, py in pts])))
    ns = _ellipse_samples(head.nose, 12)
    nn = ((ns - head.nose.centre) @ head.nose.rot / head.nose.axes**2) @ head.nose.rot.T
    boxes["nose"] = _bbox(project(ns[(nn @ view) > -0.05]))
    mw = head.mouth_w
    mpts = [
        (
            mw * math.cos(a_) * 1.05,
            head.mouth_y
            + (i.lip_lower + head.e.open + 0.01) * b * math.sin(a_) * 1.3
            - head.e.lift * b * math.cos(a_) ** 2,
        )
        for a_ in t
    ]
    boxes["mouth"] = _bbox(project(np.array([[px, py, head.face_z(px, py)] for px, py in mpts])))
    for ear in head.ears:
        boxes[ear.name] = _bbox(project(_ellipse_samples(ear, 8)))
    # keep what K-Face annotates for this camera: 7 frontal, 6 (one ear hidden), 5 (one eye too)
    n = kc.boxes_for_camera(cam)
    yaw = kc.CAMERAS[cam].yaw
    hidden_side = "left" if yaw > 0 else "right"  # yaw > 0 turns the face's image-left side away
    if n <= 6:
        boxes.pop(f"ear_{hidden_side}")
    if n == 5:
        boxes.pop(f"eye_{hidden_side}")
    return boxes


# ---------------------------------------------------------------------------------------------
# Dataset files
# ---------------------------------------------------------------------------------------------
def grid(preset: GridPreset | str = GridPreset.SAMPLE) -> list[tuple[str, str, str, str]]:
    """The (acc, light, expr, cam) combinations of a preset, in K-Face order.

    ``tutorial``: S001 x L1,L3 x E01-E03 x C6-C9 (24 images); ``sample``: the tutorial plus
    :data:`SAMPLE_EXTRAS` (30 images); ``full``: 6 x 30 x 3 x 20 = 10,800 images.
    """
    preset = GridPreset.parse(preset, "grid")
    if preset == "full":
        sel = {k: kc.all_codes(k) for k in kc.CODE_KINDS}
    else:
        sel = kc.TUTORIAL_SELECTION
    combos = [(s, l_, e, c) for s in sel["acc"] for l_ in sel["light"] for e in sel["expr"] for c in sel["cam"]]
    if preset == "sample":
        combos += [x for x in SAMPLE_EXTRAS if x not in combos]
    return combos


def _zip_info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def identity_zip_bytes(
    ident: Identity, res: str, combos: Sequence[tuple[str, str, str, str]], seed: int = 0
) -> tuple[bytes, int]:
    """One identity's zip, as K-Face ships it. Returns (zip bytes, number of images)."""
    import cv2

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for acc, light, expr, cam in combos:
            face = render_face(ident, acc, light, expr, cam, res, seed)
            ok, jpg = cv2.imencode(".jpg", face.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            assert ok, "JPEG encoding failed"
            zf.writestr(_zip_info(kc.member_path(acc, light, expr, cam), zipfile.ZIP_STORED), jpg.tobytes())
            if acc == kc.ANNOTATED_ACCESSORY and light in kc.ANNOTATED_LIGHTS:
                text = format_annotation(face.points, face.boxes)
                zf.writestr(_zip_info(kc.member_path(acc, light, expr, cam, ".txt"), zipfile.ZIP_DEFLATED), text)
    return buf.getvalue(), len(combos)


@dataclass(frozen=True)
class SampleDataResult:
    root: Path
    identities: int
    images: int
    resolutions: tuple[str, ...]
    grid: str
    seed: int
    bytes: int
    zips: tuple[Path, ...]


def _write_one(job: tuple[str, str, str, int, list]) -> tuple[str, int, int]:
    out, ident_id, res, seed, combos = job
    from kface_cli.atomic import write_bytes

    data, n = identity_zip_bytes(make_identity(ident_id, seed), res, combos, seed)
    path = Path(out) / f"{res}_Resolution" / f"{ident_id}.zip"
    write_bytes(path, data)
    return str(path), n, len(data)


def parse_resolution_limits(text: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """``Middle,Low:8,High:2`` -> (("Middle", "Low", "High"), {"Low": 8, "High": 2})."""
    resolutions: list[str] = []
    limits: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, count = part.partition(":")
        res = normalise_resolution(name)
        resolutions.append(res)
        if count:
            if not count.isdigit() or int(count) < 1:
                raise InputError(
                    f"{part!r}: the number after ':' must be a positive count of identities",
                    hint="E.g. --res Middle,High:2.",
                )
            limits[res] = int(count)
    if not resolutions:
        raise InputError("no resolution given", hint="E.g. --res Middle or --res Middle,Low:8,High:2.")
    return tuple(dict.fromkeys(resolutions)), limits


def generate_sample_data(
    out: str | Path,
    *,
    n_ids: int = SAMPLE_IDENTITIES,
    seed: int = 0,
    resolutions: Iterable[str] = (DEFAULT_RESOLUTION,),
    grid_preset: GridPreset | str = GridPreset.SAMPLE,
    ids_per_resolution: dict[str, int] | None = None,
    workers: int = 1,
    combos: Sequence[tuple[str, str, str, str]] | None = None,
) -> SampleDataResult:
    """Write a synthetic K-Face tree under ``out`` and return what was written.

    ``ids_per_resolution`` limits some resolutions to the first N identities (e.g. High for 2 of
    40) to keep the tree small. ``workers`` > 1 renders identities in parallel processes (0: one
    per CPU core, at most 8). ``combos`` (a list of (acc, light, expr, cam)) replaces the preset's grid.
    """
    from kface_cli.choices import check_seed

    check_seed(seed)
    from kface_cli.console import progress
    from kface_cli.dataset.provenance import mark_synthetic

    out = Path(out)
    res_list = tuple(dict.fromkeys(normalise_resolution(r) for r in resolutions))
    grid_name = GridPreset.parse(grid_preset, "grid").value if combos is None else "custom"
    combos = list(combos) if combos is not None else grid(grid_preset)
    ids = identity_ids(n_ids, seed)
    limits = ids_per_resolution or {}
    jobs = [(str(out), i, r, seed, combos) for r in res_list for i in ids[: limits.get(r, len(ids))]]
    workers = auto_workers(workers)
    paths: list[Path] = []
    images = total = 0
    with progress("Generating", total=len(jobs)) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_write_one, jobs)
                for path, n, size in results:
                    paths.append(Path(path))
                    bar.advance()
                    images, total = images + n, total + size
        else:
            for job in jobs:
                path, n, size = _write_one(job)
                paths.append(Path(path))
                bar.advance()
                images, total = images + n, total + size
    mark_synthetic(out, seed=seed, identities=len(ids), grid=grid_name)
    return SampleDataResult(
        root=out,
        identities=len(ids),
        images=images,
        resolutions=res_list,
        grid=grid_name,
        seed=seed,
        bytes=total,
        zips=tuple(paths),
    )
