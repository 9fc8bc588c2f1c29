"""Face detection with five ArcFace landmarks, on the models bundled inside mediapipe's wheel.

Nothing is downloaded: mediapipe 0.10.x (<= 0.10.21) ships BlazeFace (face_detection, full range)
and Face Mesh with iris refinement inside the wheel, as its "legacy solutions".

How a photo is searched (:class:`MediaPipeDetector`):

1. Very large photos are searched on a copy downscaled to at most ``max_side`` pixels; boxes and
   points are mapped back to the original's coordinates.
2. BlazeFace full-range sees a 192x192 version of its input, so faces under ~15% of the image side
   are easily missed. The image is searched whole, then in overlapping tiles of 1/2, 1/4... of its
   side (each tile seen at 192x192 is a 2x, 4x... zoom) until faces of ``min_face`` pixels are
   covered. Detections from all passes are merged by non-maximum suppression.
3. For each face, landmarks are refined by Face Mesh (refine_landmarks=True) on a square crop
   around the face: iris centres 468 (image-left eye, the subject's right) and 473, nose tip 1,
   mouth corners 61 (image-left) and 291. On the reference photos in ../shared/faces these lie
   within 10% of the inter-ocular distance of MTCNN's points. When Face Mesh finds no face in
   the crop, BlazeFace's own keypoints are used (eyes, nose; mouth corners estimated), but only
   for confident detections: Face Mesh doubles as a check that weeds out face-like textures.
4. Low light: when nothing is found in a dark photo (mean grey level under ``LOW_LIGHT_MEAN``,
   e.g. K-Face's darkest lights L6/L7), the search runs again on a contrast-enhanced copy (CLAHE on
   the lightness channel). The faces found there are marked ``low_light``; their crops are still
   cut from the original pixels, as every other face's.

Annotation mode (``landmarks="annotation"``; ``"sidecar"`` is its former name): images with a
K-Face annotation beside them (``C7.txt`` next to ``C7.jpg``) use the annotated points; no
detector runs. ``"auto"`` uses the annotation when there is one, else the detector.
``"detect"`` always runs the detector; only when it finds no face in a photo that has an annotation
is the annotated face used, marked ``annotation-fallback`` (:class:`AnnotationFallback`): K-Face's
extreme profiles (C1, C2, C12, C13) are beyond BlazeFace, and callers count these faces apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kface_cli.choices import LandmarkMode
from kface_cli.errors import InputError, KFaceError

#: ``DetectedFace.landmarks`` of points read from a K-Face annotation file.
ANNOTATION = LandmarkMode.ANNOTATION.value
#: ``DetectedFace.landmarks`` of a face the detector missed, taken from its annotation instead.
ANNOTATION_FALLBACK = "annotation-fallback"

#: Smallest face searched for and kept, in pixels of the original image (larger side of its box):
#: by default 40 px or 3% of the photo's longer side, whichever is larger.
DEFAULT_MIN_FACE = 40
DEFAULT_MIN_FACE_FRACTION = 0.03
#: BlazeFace confidence below which detections are dropped.
DEFAULT_SCORE_THRESHOLD = 0.5
#: Photos larger than this (longer side, pixels) are searched on a downscaled copy.
DEFAULT_MAX_SIDE = 1600
#: BlazeFace full-range finds faces down to about this fraction of its input's side.
_DETECTABLE_FRACTION = 0.1
#: BlazeFace full-range's input side; larger tiles are downscaled to it here (area filter).
_DETECTOR_INPUT = 192
#: Tiles overlap by this fraction of their side: more than the largest face a tile level is for
#: (twice the smallest, 0.2 of the side; larger ones are found at the previous level), so a face
#: cut by one tile is whole in its neighbour.
_TILE_OVERLAP = 0.25
#: Two detections whose boxes overlap more than this (IoU) are the same face.
_NMS_IOU = 0.3
#: Face Mesh runs on a square crop this many times the face box's larger side...
_MESH_CROP_SCALE = 2.0
#: ...resized so that its side is this many pixels.
_MESH_CROP_SIDE = 256
#: Face Mesh confirms a detection when its eyes and nose lie within this fraction of BlazeFace's
#: eye distance from BlazeFace's keypoints (real faces: <= 0.3; false detections: >= 0.4 or no mesh)...
_MESH_AGREEMENT = 0.35
#: ...or, as BlazeFace's keypoints are poor on faces turned 90 degrees, when the mesh's 5 points
#: are centred in the box (offset <= this fraction of its side; real faces <= 0.08, textures 0.15)
_MESH_MAX_CENTRE_OFFSET = 0.1
#: with an eye distance in this range of fractions of the box side (real faces 0.19-0.42).
_MESH_EYE_RANGE = (0.15, 0.6)
#: A detection that Face Mesh does not confirm is kept only with at least this score (strong
#: profiles, where the mesh fails, score 0.8+; textures that fool BlazeFace score 0.5-0.7).
_UNCONFIRMED_MIN_SCORE = 0.8
#: A photo whose mean grey level is under this is searched a second time, contrast-enhanced, when
#: the first search finds nothing (K-Face sample lights: L1 57-215, L3 34-102, L6 14-54, L7 2-13).
LOW_LIGHT_MEAN = 60.0
#: CLAHE for that second search: clip limit and tiles per side. On the sample data's L7 photos
#: the detector misses, clip 3 on 8x8 tiles recovers 4 of 6 (clip 2: 3; plain stretch or gamma: 0).
_CLAHE_CLIP = 3.0
_CLAHE_TILES = 8
#: Mediapipe Face Mesh indices of the ArcFace points (image-left eye = subject's right eye).
#: Nose: point 4 (just above the tip) matches MTCNN/RetinaFace's nose point better than the tip (1):
#: median error 4.4% vs 6.7% of the inter-ocular distance on the reference photos.
MESH_POINTS5 = (468, 473, 4, 61, 291)

Box = tuple[float, float, float, float]  # x, y, w, h


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face: box (x, y, w, h), detector confidence and 5 ArcFace-ordered landmarks (5, 2).

    ``landmarks`` says where the points came from: "mesh" (Face Mesh iris/nose/mouth points),
    "detector" (BlazeFace keypoints; mouth corners estimated: less precise), "annotation"
    (a K-Face annotation file) or "annotation-fallback" (a face the detector missed, taken from
    the photo's K-Face annotation: see :class:`AnnotationFallback`).
    ``low_light``: found only in the contrast-enhanced copy of a dark photo.
    """

    box: Box
    score: float
    points5: np.ndarray
    landmarks: str = "mesh"
    low_light: bool = False

    @property
    def size(self) -> float:
        """The larger side of the box, in pixels."""
        return float(max(self.box[2], self.box[3]))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: ``box`` [x, y, w, h], ``score``, ``points5`` [[x, y] x 5], ``landmarks``, ``low_light``."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4) if np.isfinite(self.score) else None,
            "points5": np.round(self.points5.astype(np.float64), 1).tolist(),
            "landmarks": self.landmarks,
            "low_light": self.low_light,
        }


class Detector(Protocol):
    def detect(self, image_bgr: np.ndarray, path: str | Path | None = None) -> list[DetectedFace]: ...


# ------------------------------------------------------------------------------------------
# mediapipe: created lazily, cached, quiet
# ------------------------------------------------------------------------------------------

#: A mediapipe graph serves one thread at a time: each thread runs graphs of its own (threads
#: detect in parallel, see kface_cli/parallel.py). Imports and graph creation take this lock
#: (creation silences file descriptor 2, which is process-wide).
_MP_INIT_LOCK = threading.RLock()
_THREAD_GRAPHS = threading.local()
_MP_PROTOBUF_WARNING = r"SymbolDatabase\.GetPrototype\(\) is deprecated"


def _debugging() -> bool:
    from kface_cli.console import MODE

    return MODE.debug


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence mediapipe/TFLite's C++ log lines (written straight to file descriptor 2), unless ``--debug``."""
    if _debugging():
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (e.g. some notebook kernels)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


#: Packages whose ``__init__`` runs only when asked for a name (see :func:`_import_face_solutions`).
_MP_DEFERRED_INITS = ("mediapipe", "mediapipe.python.solutions")


def _import_face_solutions() -> tuple[Any, Any]:
    """mediapipe's face_detection and face_mesh solutions, without the rest of mediapipe.

    ``import mediapipe.<anything>`` first runs ``mediapipe/__init__.py``, which imports every
    legacy solution (``drawing_utils``, and with it matplotlib: 1.4 s) and the Tasks API
    (sounddevice...); the detector needs two solution modules. So ``mediapipe`` and
    ``mediapipe.python.solutions`` are registered without running their ``__init__`` (their
    submodules import as usual), and both run it the first time anyone asks either for a name it
    lacks: code that uses ``mediapipe.solutions`` or ``mediapipe.tasks`` later in the same
    process still gets the whole package.
    """
    deferred: list[tuple[types.ModuleType, Any]] = []

    def finish() -> None:
        while deferred:  # the solutions package first: mediapipe's __init__ imports it
            module, spec = deferred.pop()
            del module.__dict__["__getattr__"]
            spec.loader.exec_module(module)

    for name in _MP_DEFERRED_INITS:
        if name in sys.modules:  # already imported (whole or deferred)
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"No module named {name!r}")
        module = importlib.util.module_from_spec(spec)

        def module_getattr(attr: str, module: types.ModuleType = module) -> Any:
            finish()
            return getattr(module, attr)

        module.__dict__["__getattr__"] = module_getattr
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        deferred.append((module, spec))
    # import_module, not `from ... import`: that asks the package for the names first
    return tuple(importlib.import_module(f"mediapipe.python.solutions.{m}") for m in ("face_detection", "face_mesh"))


@functools.cache
def _import_mediapipe() -> Any:
    if not _debugging():  # read by mediapipe's C++ logging when it loads: only errors, unless --debug
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            face_detection, face_mesh = _import_face_solutions()
    except ImportError as e:  # pragma: no cover - mediapipe is a dependency
        raise KFaceError(
            f"mediapipe is not available: {e}", hint="Install it with `pip install 'mediapipe<=0.10.21'`."
        ) from None
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    return face_detection, face_mesh


def _thread_graph(key: tuple[Any, ...], make: Callable[[Any, Any], Any]) -> Any:
    """This thread's mediapipe graph for ``key``, made by ``make(face_detection, face_mesh)`` once."""
    graphs = _THREAD_GRAPHS.__dict__.setdefault("graphs", {})
    if key not in graphs:
        with _MP_INIT_LOCK:
            solutions = _import_mediapipe()
            with _quiet_native_stderr():
                graph = make(*solutions)
                graph.process(np.zeros((64, 64, 3), np.uint8))  # first run prints the delegate banner
        graphs[key] = graph
    return graphs[key]


def _face_detection(min_confidence: float) -> Any:
    return _thread_graph(
        ("detection", min_confidence),
        lambda face_detection, _: face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        ),
    )


def _face_mesh() -> Any:
    return _thread_graph(
        ("mesh",),
        lambda _, face_mesh: face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        ),
    )


def _process(solution: Any, rgb: np.ndarray, *, quiet_first: bool = False) -> Any:
    # mediapipe's glue calls a protobuf API that newer protobuf deprecates, on every run. A filter,
    # not catch_warnings(), which is not thread-safe; re-adding the same filter changes nothing.
    warnings.filterwarnings("ignore", _MP_PROTOBUF_WARNING, UserWarning)
    if not quiet_first or _FIRST_RUNS.get(id(solution), 0) >= _QUIET_RUNS:
        return solution.process(np.ascontiguousarray(rgb))
    # Face Mesh's C++ calculators log once on their first face ("W0000 ...
    # landmark_projection_calculator.cc: Using NORM_RECT without IMAGE_DIMENSIONS..."), whatever
    # GLOG_minloglevel says: its first runs are made with file descriptor 2 silenced.
    with _MP_INIT_LOCK, _quiet_native_stderr():
        result = solution.process(np.ascontiguousarray(rgb))
    found = bool(getattr(result, "multi_face_landmarks", None))
    _FIRST_RUNS[id(solution)] = _QUIET_RUNS if found else _FIRST_RUNS.get(id(solution), 0) + 1
    return result


#: Runs of a Face Mesh graph (by id) made silenced: until its first face, at most _QUIET_RUNS.
_FIRST_RUNS: dict[int, int] = {}
_QUIET_RUNS = 4


# ------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _overlap_of_smaller(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (a face box inside a bigger one is a duplicate)."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    smaller = min(a[2] * a[3], b[2] * b[3])
    return iw * ih / smaller if smaller > 0 else 0.0


def _nms(cands: list[tuple[Box, float, np.ndarray]], iou: float = _NMS_IOU) -> list[tuple[Box, float, np.ndarray]]:
    kept: list[tuple[Box, float, np.ndarray]] = []
    for c in sorted(cands, key=lambda c: -c[1]):
        if all(_iou(c[0], k[0]) <= iou and _overlap_of_smaller(c[0], k[0]) < 0.7 for k in kept):
            kept.append(c)
    return kept


def _tile_origins(length: int, tile: int) -> list[int]:
    if tile >= length:
        return [0]
    step = max(1, int(tile * (1 - _TILE_OVERLAP)))
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _disagreement(points5: np.ndarray, kps: np.ndarray) -> float:
    """Largest distance between mesh eyes/nose and BlazeFace's, over BlazeFace's eye distance."""
    iod = max(float(np.linalg.norm(kps[1] - kps[0])), 1e-6)
    return float(np.linalg.norm(points5[:3] - kps[:3], axis=1).max() / iod)


def _mesh_confirms(points5: np.ndarray, kps: np.ndarray, box: Box) -> bool:
    """Whether Face Mesh's points describe the face BlazeFace found (see _MESH_AGREEMENT)."""
    if _disagreement(points5, kps) <= _MESH_AGREEMENT:
        return True
    side = max(box[2], box[3], 1e-6)
    centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
    offset = float(np.linalg.norm(points5.mean(axis=0) - centre)) / side
    eyes = float(np.linalg.norm(points5[1] - points5[0])) / side
    return offset <= _MESH_MAX_CENTRE_OFFSET and _MESH_EYE_RANGE[0] <= eyes <= _MESH_EYE_RANGE[1]


def _estimate_mouth_corners(kps: np.ndarray) -> np.ndarray:
    """BlazeFace gives eyes, nose tip and mouth centre; corners lie along the eye line."""
    right_eye, left_eye, mouth = kps[0], kps[1], kps[3]  # kps[2] is the nose tip
    half = (left_eye - right_eye) * 0.42  # mouth width ~0.85 x eye distance
    return np.stack([mouth - half, mouth + half])


# ------------------------------------------------------------------------------------------
# detectors
# ------------------------------------------------------------------------------------------


class MediaPipeDetector:
    """BlazeFace full-range (whole image + zoomed tiles) + Face Mesh landmarks per face.

    Args:
        min_face: smallest face to find, in pixels (larger side of the box) of the original photo;
            default 40 or 3% of the photo's longer side. Each halving searches 4x more tiles
            (slower): lower it for crowds far away, raise it (e.g. 150) for portraits.
        score_threshold: BlazeFace confidence to keep a face (0-1). Lower finds more faces and
            more false ones.
        max_side: photos larger than this are searched on a downscaled copy.
        refine: refine landmarks with Face Mesh (recommended; off = BlazeFace keypoints only).
        low_light: search a dark photo where nothing was found again, contrast-enhanced.
    """

    name = "mediapipe"

    def __init__(
        self,
        min_face: int | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_side: int = DEFAULT_MAX_SIDE,
        refine: bool = True,
        low_light: bool = True,
    ):
        if min_face is not None and min_face < 1:
            raise KFaceError(f"--min-face must be at least 1 pixel, got {min_face}")
        if not 0.0 < score_threshold < 1.0:
            raise KFaceError(f"score threshold must be between 0 and 1, got {score_threshold}")
        self.min_face = int(min_face) if min_face is not None else None
        self.score_threshold = float(score_threshold)
        self.max_side = int(max_side)
        self.refine = refine
        self.low_light = low_light

    def detect(self, image_bgr: np.ndarray, path: str | Path | None = None) -> list[DetectedFace]:
        """Faces in a BGR uint8 image, largest first."""
        image = _check_image(image_bgr)
        faces = self._search(image)
        if not faces and self.low_light and is_low_light(image):
            faces = [dataclasses.replace(f, low_light=True) for f in self._search(enhance_low_light(image))]
        return faces

    def _search(self, image: np.ndarray) -> list[DetectedFace]:
        import cv2

        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        work = (
            cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if scale < 1
            else image
        )
        rgb = cv2.cvtColor(work, cv2.COLOR_BGR2RGB)
        min_face = self.min_face_for(w, h)
        cands = _nms(self._candidates(rgb, min_face * scale))
        faces = []
        for box_w, score, kps_w in cands:
            box = tuple(float(v) / scale for v in box_w)
            kps = kps_w / scale
            if max(box[2], box[3]) < min_face:
                continue
            points, source = (self._mesh_points(image, box), "mesh") if self.refine else (None, "detector")
            if points is not None and not _mesh_confirms(points, kps, box):
                points = None  # the mesh found another face (or none) in the crop
            if points is None:
                if self.refine and score < _UNCONFIRMED_MIN_SCORE:
                    continue  # unconfirmed and not confident: most likely a face-like texture
                points, source = (
                    np.concatenate([kps[[0, 1, 2]], _estimate_mouth_corners(kps)]).astype(np.float32),
                    "detector",
                )
            faces.append(DetectedFace(box=box, score=float(score), points5=points.astype(np.float32), landmarks=source))
        faces.sort(key=lambda f: -f.box[2] * f.box[3])
        return faces

    def min_face_for(self, width: int, height: int) -> float:
        """The smallest face size searched for in a ``width`` x ``height`` photo."""
        if self.min_face is not None:
            return float(self.min_face)
        return max(float(DEFAULT_MIN_FACE), DEFAULT_MIN_FACE_FRACTION * max(width, height))

    def _candidates(self, rgb: np.ndarray, min_face_work: float) -> list[tuple[Box, float, np.ndarray]]:
        """BlazeFace on the whole image, then on tiles of 1/2, 1/4... of its side."""
        detector = _face_detection(self.score_threshold)
        h, w = rgb.shape[:2]
        side = max(h, w)
        cands: list[tuple[Box, float, np.ndarray]] = []
        tile = side
        while True:
            for y0 in _tile_origins(h, tile):
                for x0 in _tile_origins(w, tile):
                    crop = rgb[y0 : y0 + tile, x0 : x0 + tile]
                    cands.extend(self._run_detector(detector, crop, x0, y0, (h, w)))
            smallest_found = tile * _DETECTABLE_FRACTION
            tile //= 2
            if smallest_found <= max(min_face_work, 1.0) or tile < _DETECTOR_INPUT // 2:
                break
        return cands

    def _run_detector(
        self, detector: Any, crop: np.ndarray, x0: int, y0: int, full: tuple[int, int]
    ) -> list[tuple[Box, float, np.ndarray]]:
        import cv2

        ch, cw = crop.shape[:2]
        fh, fw = full
        if max(ch, cw) > _DETECTOR_INPUT:  # area-filtered downscale beats the graph's bilinear one
            f = _DETECTOR_INPUT / max(ch, cw)
            crop = cv2.resize(crop, (max(1, round(cw * f)), max(1, round(ch * f))), interpolation=cv2.INTER_AREA)
        result = _process(detector, crop)
        out = []
        for d in result.detections or []:
            score = float(d.score[0])
            if score < self.score_threshold:
                continue
            rb = d.location_data.relative_bounding_box
            bx, by, bw, bh = rb.xmin * cw, rb.ymin * ch, rb.width * cw, rb.height * ch
            # a face cut by the tile's edge is found whole in an overlapping tile
            margin = 2.0
            touches = (
                (bx < -margin and x0 > 0)
                or (by < -margin and y0 > 0)
                or (bx + bw > cw + margin and x0 + cw < fw)
                or (by + bh > ch + margin and y0 + ch < fh)
            )
            if touches or bw <= 0 or bh <= 0:
                continue
            kps = np.array(
                [[k.x * cw + x0, k.y * ch + y0] for k in d.location_data.relative_keypoints], dtype=np.float64
            )
            out.append(((bx + x0, by + y0, bw, bh), score, kps))
        return out

    def _mesh_points(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """Face Mesh on a square crop around ``box``: 5 ArcFace points in image coordinates, or None."""
        import cv2

        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        half = max(box[2], box[3]) * _MESH_CROP_SCALE / 2
        x0, y0 = cx - half, cy - half
        k = _MESH_CROP_SIDE / (2 * half)
        # crop + resize in one warp (pads with black outside the image)
        m = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]], dtype=np.float64)
        crop = cv2.warpAffine(
            image, m, (_MESH_CROP_SIDE, _MESH_CROP_SIDE), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        )
        result = _process(_face_mesh(), cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), quiet_first=True)
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([[lm[i].x * _MESH_CROP_SIDE, lm[i].y * _MESH_CROP_SIDE] for i in MESH_POINTS5], dtype=np.float64)
        pts = pts / k + np.array([x0, y0])
        # the mesh must describe this face, not a neighbour inside the crop
        ex = (pts[0] + pts[1]) / 2
        if not (
            box[0] - 0.25 * box[2] <= ex[0] <= box[0] + 1.25 * box[2]
            and box[1] - 0.25 * box[3] <= ex[1] <= box[1] + 1.25 * box[3]
        ):
            return None
        return pts.astype(np.float32)


class AnnotationLandmarks:
    """Landmarks from a K-Face annotation beside the image (``C7.txt`` next to ``C7.jpg``)."""

    name = ANNOTATION

    def detect(self, image_bgr: np.ndarray, path: str | Path | None = None) -> list[DetectedFace]:
        sidecar = sidecar_path(path)
        if sidecar is None:
            raise InputError(
                f"no K-Face annotation beside {path}" if path else "annotation landmarks need the image's path",
                hint="Use --landmarks detect (or auto) for photos without a .txt annotation.",
            )
        return [_face_from_sidecar(sidecar)]


class AutoDetector:
    """Annotation landmarks when the image has a K-Face annotation beside it, else the detector."""

    name = "auto"

    def __init__(self, detector: Detector):
        self.detector = detector

    def detect(self, image_bgr: np.ndarray, path: str | Path | None = None) -> list[DetectedFace]:
        sidecar = sidecar_path(path)
        if sidecar is not None:
            return [_face_from_sidecar(sidecar)]
        return self.detector.detect(image_bgr, path)


class AnnotationFallback:
    """The detector; when it finds no face in a photo with a K-Face annotation beside it, the
    annotated face, marked ``annotation-fallback``. An annotation that cannot be read, or whose
    points do not fit the photo, is no fallback (the photo then has no face, as without one)."""

    name = "detect"

    def __init__(self, detector: Detector):
        self.detector = detector

    def detect(self, image_bgr: np.ndarray, path: str | Path | None = None) -> list[DetectedFace]:
        faces = self.detector.detect(image_bgr, path)
        sidecar = None if faces else sidecar_path(path)
        if sidecar is None:
            return faces
        from kface_cli.dataset.annotation import read_annotation

        try:
            annotation = read_annotation(sidecar)
            if annotation.problems(image_bgr.shape[1], image_bgr.shape[0]):
                return []
            face = _face_from_annotation(annotation)
        except KFaceError:
            return []
        return [dataclasses.replace(face, landmarks=ANNOTATION_FALLBACK)]


def is_low_light(image_bgr: np.ndarray) -> bool:
    """Whether a photo is dark enough for the second, contrast-enhanced search (``LOW_LIGHT_MEAN``)."""
    step = max(1, max(image_bgr.shape[:2]) // 256)  # the mean of a subsample is plenty
    return float(image_bgr[::step, ::step].mean()) < LOW_LIGHT_MEAN


def enhance_low_light(image_bgr: np.ndarray) -> np.ndarray:
    """A contrast-enhanced copy of a dark photo: CLAHE on the L channel of Lab (colours kept)."""
    import cv2

    lab = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2LAB)
    clahe = cv2.createCLAHE(clipLimit=_CLAHE_CLIP, tileGridSize=(_CLAHE_TILES, _CLAHE_TILES))
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def sidecar_path(path: str | Path | None) -> Path | None:
    """The K-Face annotation file beside an image (``C7.txt`` for ``C7.jpg``), if it exists."""
    if path is None:
        return None
    txt = Path(path).with_suffix(".txt")
    return txt if txt.is_file() else None


def _face_from_sidecar(txt: Path) -> DetectedFace:
    from kface_cli.dataset.annotation import read_annotation

    return _face_from_annotation(read_annotation(txt))


def _face_from_annotation(ann: Any) -> DetectedFace:
    points = np.asarray(ann.points5, dtype=np.float32).reshape(5, 2)
    try:
        box = tuple(float(v) for v in ann.face_box)
    except KeyError:
        lo, hi = points.min(axis=0), points.max(axis=0)
        box = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    return DetectedFace(box=box, score=1.0, points5=points, landmarks=ANNOTATION)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"detectors take BGR uint8 images (H, W, 3), got {image.dtype} {image.shape}",
            hint="Read images with kface_cli.face.imageio.read_image (it converts grey, RGBA and 16-bit).",
        )
    if min(image.shape[:2]) < 8:
        raise InputError(f"image too small to hold a face: {image.shape[1]}x{image.shape[0]}")
    return image


def get_detector(
    landmarks: LandmarkMode | str = LandmarkMode.AUTO,
    min_face: int | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Detector:
    """A face detector. ``landmarks``: "detect" (mediapipe; a face it misses in a photo with a
    K-Face annotation is taken from the annotation, see :class:`AnnotationFallback`), "annotation"
    (the K-Face .txt beside the image; "sidecar" is accepted too) or "auto" (the annotation when the
    .txt exists, else mediapipe). Mediapipe loads on first use.

    ``min_face`` (pixels; default 40 or 3% of the photo's longer side) and ``score_threshold``
    (0-1) trade recall for speed and false detections; see :class:`MediaPipeDetector`."""
    landmarks = LandmarkMode.parse(landmarks, "--landmarks")
    if landmarks is LandmarkMode.ANNOTATION:
        return AnnotationLandmarks()
    detector = MediaPipeDetector(min_face=min_face, score_threshold=score_threshold, max_side=max_side)
    return AnnotationFallback(detector) if landmarks is LandmarkMode.DETECT else AutoDetector(detector)
