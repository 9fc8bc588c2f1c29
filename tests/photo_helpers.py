"""Real-photo inputs made from the bundled public-domain astronaut.jpg (tests/fixtures/README.md).

* :func:`head_and_shoulders`: the portrait resized to a 224x224 (or 112x112) square, as a profile
  picture is: a face of about 45 px in a square photo, not an aligned crop.
* :func:`group_of_six`: six copies (three mirrored) in a 720x480 photo: six faces.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "astronaut.jpg"


def astronaut_bgr() -> np.ndarray:
    return cv2.imread(str(FIXTURE))


def head_and_shoulders(path: Path | None = None, side: int = 224) -> np.ndarray:
    """The astronaut portrait as a ``side`` x ``side`` BGR photo (written to ``path`` when given)."""
    image = cv2.resize(astronaut_bgr(), (side, side), interpolation=cv2.INTER_AREA)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    return image


def group_of_six(path: Path | None = None) -> np.ndarray:
    """A 720x480 BGR photo holding six faces (written to ``path`` when given)."""
    small = cv2.resize(astronaut_bgr(), (240, 240), interpolation=cv2.INTER_AREA)
    mirrored = cv2.flip(small, 1)
    image = np.vstack([np.hstack([small, mirrored, small]), np.hstack([mirrored, small, mirrored])])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    return image


class ColourEmbedder:
    """A stand-in model that sees colour (a fixed projection of the crop's BGR pixels): feeding it
    RGB where BGR is expected changes the embedding, as it changes a real network's."""

    def __init__(self, embedding_size: int = 32, seed: int = 1):
        import hashlib

        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((16 * 16 * 3, embedding_size)).astype(np.float32)
        self.embedding_size = embedding_size
        self.network = "colour"
        self.source = None
        self.flip = False
        self.fingerprint = hashlib.sha256(self.projection.tobytes()).hexdigest()[:20]

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[None]
        small = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in faces]).astype(np.float32)
        x = small.reshape(len(faces), -1) - 127.5
        v = x @ self.projection
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def describe(self) -> dict:
        return {"network": self.network, "fingerprint": self.fingerprint, "embedding_size": self.embedding_size}
