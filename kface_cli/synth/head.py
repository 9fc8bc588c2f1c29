"""The 3D head of a synthetic identity: ellipsoids in head coordinates, the expression's changes,
the head's rotation per camera and its landmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kface_cli.synth.identity import Identity


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
class Ellipsoid:
    name: str
    centre: np.ndarray  # (3,) head frame
    axes: np.ndarray  # (3,) semi-axes
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # object -> head frame


def surface_z(ell: Ellipsoid, x: float, y: float) -> float:
    """Front (max z) surface point of an axis-aligned ellipsoid at head-frame (x, y); nan if none."""
    q = 1 - ((x - ell.centre[0]) / ell.axes[0]) ** 2 - ((y - ell.centre[1]) / ell.axes[1]) ** 2
    return float(ell.centre[2] + ell.axes[2] * math.sqrt(q)) if q >= 0 else float("nan")


@dataclass(frozen=True)
class Expression:
    mouth_w: float = 1.0  # mouth half-width factor
    lift: float = 0.0  # corner lift / b (+: up)
    open: float = 0.0  # opening / b
    eye_open: float = 1.0
    brow_raise: float = 0.0  # / b (+: up)
    brow_inner: float = 0.0  # inner ends down / b (frown)


EXPRESSIONS = {
    "E01": Expression(),
    "E02": Expression(mouth_w=1.22, lift=0.07, open=0.055, eye_open=0.62, brow_raise=0.02),
    "E03": Expression(mouth_w=0.9, lift=-0.045, open=0.0, eye_open=0.8, brow_raise=-0.025, brow_inner=0.05),
}


class Head:
    """All 3D parts of one identity with one expression and accessory, in head coordinates."""

    def __init__(self, ident: Identity, expr: Expression, acc: str):
        self.i = ident
        self.e = expr
        self.acc = acc
        a, b, c = ident.a, ident.b, ident.c
        self.cranium = Ellipsoid("cranium", np.array([0.0, 0.0, 0.0]), np.array([a, b, c]))
        self.jaw = Ellipsoid(
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
        self.nose = Ellipsoid("nose", centre, np.array([nw, nh, nl]), tilt)
        ear_h = b * ident.ear_size
        ear_y = b * ident.ear_y
        self.ears = [
            Ellipsoid(
                f"ear_{side}", np.array([sx * a * 0.96, ear_y, -c * 0.08]), np.array([a * 0.13, ear_h * 0.5, c * 0.22])
            )
            for side, sx in (("left", -1), ("right", 1))
        ]
        self.neck = Ellipsoid("neck", np.array([0.0, b * 1.15, -c * 0.25]), np.array([a * 0.52, b * 0.7, c * 0.55]))
        self.torso = Ellipsoid("torso", np.array([0.0, b * 2.25, -c * 0.3]), np.array([a * 2.7, b * 0.8, c * 1.2]))
        v = ident.hair_volume
        self.hair = Ellipsoid(
            "hair", np.array([0.0, -b * 0.04 * v, -c * 0.04]), np.array([a * v, b * v, c * (v + 0.02)])
        )
        self.long_hair = None
        if ident.hair_style in ("long", "bob"):
            length = 1.05 if ident.hair_style == "long" else 0.7
            self.long_hair = Ellipsoid(
                "long_hair",
                np.array([0.0, b * (0.1 + length * 0.35), -c * 0.3]),
                np.array([a * 1.13 * v, b * length, c * 0.8]),
            )
        self.hat = None
        if acc in ("S005", "S006"):
            self.hat = Ellipsoid("hat", np.array([0.0, -b * 0.42, -c * 0.02]), np.array([a * 1.17, b * 0.72, c * 1.2]))

    # --- surface helpers ---------------------------------------------------------------------
    def face_z(self, x: float, y: float) -> float:
        zs = [surface_z(e, x, y) for e in (self.cranium, self.jaw)]
        zs = [z for z in zs if not math.isnan(z)]
        return max(zs) if zs else 0.0

    def objects(self) -> list[Ellipsoid]:
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
