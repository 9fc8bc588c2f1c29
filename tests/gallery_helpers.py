"""Shared helpers for the gallery tests: synthetic K-Face photos, a sidecar detector, a fast embedder.

The stand-in embedder is deterministic and quick (a fixed random projection of the aligned
crop's pixels), so enrol/identify logic is tested without training a network; the CLI tests use
a real MobileFaceNet file through ``load_embedder``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CODES = [
    ("S001", "L1", "E01", "C6"),
    ("S001", "L1", "E02", "C6"),
    ("S001", "L1", "E01", "C7"),
    ("S001", "L1", "E03", "C6"),
]


@dataclass(frozen=True)
class FakeFace:
    box: tuple[float, float, float, float]
    score: float
    points5: np.ndarray


class SidecarDetector:
    """Reads the K-Face ``.txt`` beside a photo (like ``get_detector("annotation")``).

    ``extra`` adds a smaller second face (to test multi-face photos); no sidecar = no face.
    """

    def __init__(self, extra: bool = False):
        self.extra = extra

    def detect(self, image, path=None):
        from kface_cli.dataset.annotation import read_annotation

        side = Path(path).with_suffix(".txt") if path is not None else None
        if side is None or not side.is_file():
            return []
        ann = read_annotation(side)
        faces = [FakeFace(tuple(float(v) for v in ann.face_box), 0.99, np.asarray(ann.points5, dtype=np.float32))]
        if self.extra:
            small = np.asarray(ann.points5, dtype=np.float32) * 0.5
            x, y, w, h = ann.face_box
            faces.append(FakeFace((x * 0.5, y * 0.5, w * 0.5, h * 0.5), 0.9, small))
        return faces


class PixelEmbedder:
    """Deterministic stand-in for :class:`kface_cli.embedding.embedder.Embedder` (unit vectors from pixels)."""

    def __init__(self, embedding_size: int = 64, seed: int = 0, delay: float = 0.0):
        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((28 * 28, embedding_size)).astype(np.float32)
        self.embedding_size = embedding_size
        self.network = "pixels"
        self.source = None
        self.flip = False
        self.delay = delay
        self.fingerprint = hashlib.sha256(self.projection.tobytes()).hexdigest()[:20]

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        import cv2

        if self.delay:
            time.sleep(self.delay)
        faces = np.asarray(faces)
        small = np.stack(
            [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (28, 28), interpolation=cv2.INTER_AREA) for f in faces]
        ).astype(np.float32)
        small = small.reshape(len(faces), -1)
        small -= small.mean(axis=1, keepdims=True)
        emb = small @ self.projection  # (N, D)
        return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def render_photo(path: Path, identity: str, codes=CODES[0], res: str = "Low", sidecar: bool = True) -> Path:
    """Write a synthetic K-Face photo of ``identity`` (an 8-digit K-Face ID) and its .txt sidecar."""
    from kface_cli.dataset.annotation import format_annotation
    from kface_cli.face.imageio import write_image
    from kface_cli.synth import generator as synth

    face = synth.render_face(synth.make_identity(identity), *codes, res)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, face.image)
    if sidecar:
        path.with_suffix(".txt").write_text(format_annotation(face.points, face.boxes))
    return path


def people_folder(root: Path, names: dict[str, str], photos_each: int = 2, layout: str = "folders") -> Path:
    """``names``: display name -> synthetic K-Face ID. ``layout``: folders (DIR/<name>/*.jpg) or files (DIR/<name>.jpg)."""
    for name, ident in names.items():
        if layout == "files":
            render_photo(root / f"{name}.jpg", ident, CODES[0])
        else:
            for j in range(photos_each):
                render_photo(root / name / f"{j}.jpg", ident, CODES[j % len(CODES)])
    return root


@pytest.fixture(scope="session")
def mbf_model(tmp_path_factory) -> Path:
    """A MobileFaceNet backbone.pth (random weights, 128-d): what ``--model`` loads in CLI tests."""
    import torch

    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "backbone.pth"
    torch.save(get_backbone("mbf", embedding_size=128).state_dict(), path)
    return path
