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

import math
from dataclasses import dataclass

import numpy as np

from kface_cli.dataset import codes as kc
from kface_cli.synth.head import EXPRESSIONS, Ellipsoid, Expression, Head, head_rotation
from kface_cli.synth.identity import Identity, keyed_rng

#: Image sizes (width, height) per resolution, as in the real dataset.
IMAGE_SIZES: dict[str, tuple[int, int]] = {"High": (864, 576), "Middle": (346, 230), "Low": (173, 115)}
#: Render at this multiple of the output size and downsample (anti-aliasing).
SUPERSAMPLE: dict[str, int] = {"High": 1, "Middle": 2, "Low": 2}
#: Pixels per identity length unit, as a multiple of the image height (a face box is about half
#: the image height, as in K-Face).
HEAD_SCALE = 1.45


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


def _paint_face(head: Head, p: np.ndarray, albedo: np.ndarray) -> None:
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
    width, height = IMAGE_SIZES[res]
    ss = SUPERSAMPLE[res]
    W, H = width * ss, height * ss
    scene = keyed_rng("scene", seed, ident.id, acc, light, expr, cam)  # same scene at every resolution
    noise_rng = keyed_rng("noise", seed, ident.id, acc, light, expr, cam, res)

    pose = _pose(ident, acc, expr, cam, scene, H, W)
    head, objects = pose.head, pose.head.objects()
    best_obj, best_p = _ray_cast(pose, objects, H, W)
    hit_idx = np.flatnonzero(best_obj >= 0)
    obj_of = best_obj[hit_idx]
    pts_all = best_p[hit_idx]
    albedo = _albedo(ident, head, objects, obj_of, pts_all)
    shade = _shade(objects, obj_of, pts_all, light, scene)

    img = _backdrop(scene, H, W).reshape(-1, 3)
    img *= 0.55 + 0.45 * scene.uniform(0.7, 1.0)
    img[hit_idx] = albedo * shade[:, None]
    image = _camera(img.reshape(H, W, 3), light, scene, noise_rng, width, height, ss)

    # annotation: project landmarks and parts
    def project(p3: np.ndarray) -> np.ndarray:
        cam_xy = (np.atleast_2d(p3) @ pose.rot.T)[:, :2]
        return (cam_xy * pose.scale + pose.centre) / ss

    points = project(head.landmarks()) + scene.normal(0, 0.6, (7, 2)) * height / 230
    boxes = _boxes(head, project, pose.view, cam)
    return RenderedFace(image=image, points=points, boxes=boxes)


@dataclass(frozen=True)
class _Pose:
    """One take: the head with this take's expression, its rotation, scale (pixels per unit),
    centre in pixels, and the direction to the camera in the head's frame."""

    head: Head
    rot: np.ndarray
    scale: float
    centre: np.ndarray
    view: np.ndarray


def _pose(ident: Identity, acc: str, expr: str, cam: str, scene: np.random.Generator, H: int, W: int) -> _Pose:
    camera = kc.CAMERAS[cam]
    strength = scene.uniform(0.8, 1.15)  # how strongly this take shows the expression
    base = EXPRESSIONS[expr]
    expression = Expression(
        mouth_w=1 + (base.mouth_w - 1) * strength,
        lift=base.lift * strength,
        open=base.open * strength,
        eye_open=1 - (1 - base.eye_open) * strength,
        brow_raise=base.brow_raise * strength,
        brow_inner=base.brow_inner * strength,
    )
    head = Head(ident, expression, acc)
    rot = head_rotation(camera.pitch + scene.normal(0, 2.0), camera.yaw + scene.normal(0, 2.5), scene.normal(0, 3.0))
    scale = H * HEAD_SCALE * scene.uniform(0.96, 1.04)  # pixels per unit
    centre = np.array(
        [W / 2 + (ident.centre[0] + scene.normal(0, 0.01)) * H, H / 2 + (ident.centre[1] + scene.normal(0, 0.01)) * H]
    )
    view = rot.T @ np.array([0.0, 0.0, 1.0])  # direction to the camera, head frame
    return _Pose(head, rot, scale, centre, view)


def _ray_cast(pose: _Pose, objects: list, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the object seen (-1: none) and the head-frame point hit: (H*W,), (H*W, 3).

    Ray casting, per object inside its projected bounding box: pixel (u, v) -> camera ray
    (x, y, z); its head-frame point is rot.T @ (x, y, z), the visible hit the one with the largest z.
    """
    head, rot, scale, centre, view = pose.head, pose.rot, pose.scale, pose.centre, pose.view
    ident = head.i
    P = H * W
    best_z = np.full(P, -np.inf)
    best_obj = np.full(P, -1)
    best_p = np.zeros((P, 3))
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
    return best_obj, best_p


def _albedo(ident: Identity, head: Head, objects: list, obj_of: np.ndarray, pts_all: np.ndarray) -> np.ndarray:
    """The colour of each hit point: per object, then the face painted (eyes, brows, lips, nostrils)."""
    albedo = np.zeros((len(obj_of), 3))
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
    return albedo


def _shade(
    objects: list, obj_of: np.ndarray, pts_all: np.ndarray, light: str, scene: np.random.Generator
) -> np.ndarray:
    """Lambert shading of each hit point, with the light fixed to the subject, normals in head frame."""
    _, ambient, light_dir = _light_model(light)
    light_dir = _unit(light_dir + scene.normal(0, 0.08, 3))
    normals = np.zeros_like(pts_all)
    for k, obj in enumerate(objects):
        m = obj_of == k
        if m.any():
            q = ((pts_all[m] - obj.centre) @ obj.rot) / obj.axes**2
            normals[m] = (q @ obj.rot.T) / np.linalg.norm(q, axis=1, keepdims=True)
    shade = ambient + (1 - ambient) * np.clip(normals @ light_dir, 0, 1)
    return shade


def _camera(
    img: np.ndarray,
    light: str,
    scene: np.random.Generator,
    noise_rng: np.random.Generator,
    width: int,
    height: int,
    ss: int,
) -> np.ndarray:
    """The camera: exposure, white balance, downsample, blur, noise, gamma; a uint8 image."""
    import cv2

    brightness, _, _ = _light_model(light)
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
    return image


def _bbox(pts2: np.ndarray, margin: float = 0.0) -> tuple[float, float, float, float]:
    x0, y0 = pts2.min(0)
    x1, y1 = pts2.max(0)
    w, h = x1 - x0, y1 - y0
    return (x0 - margin * w, y0 - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin))


def _ellipse_samples(ell: Ellipsoid, n: int = 16) -> np.ndarray:
    th, ph = np.meshgrid(np.linspace(0, math.pi, n), np.linspace(0, 2 * math.pi, n * 2, endpoint=False))
    u = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    return ell.centre + (u * ell.axes) @ ell.rot.T


def _boxes(head: Head, project, view: np.ndarray, cam: str) -> dict:
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
