"""``FakeEmbedder``: the one stand-in for a face model in the tests.

It *is* an :class:`~kface_cli.embedding.embedder.Embedder` (the same ``embed``, input checks,
flip-sum, L2 normalisation, fingerprint rule and ``describe()``); only its network is a fixed,
fast, deterministic function of the pixels instead of a trained net, so enrol, identify,
verify and evaluate logic is tested without training anything.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.embedding.embedder import Embedder

#: ``features="pooled"``: 4x4 cells x 3 colours.
POOLED_CELLS = 4
#: ``features="pixels"``: the grey face pooled to 28x28, then projected.
PIXELS_SIDE = 28
#: ``features="colour"``: the face pooled to 16x16 in colour, then projected.
COLOUR_SIDE = 16


class FakeEmbedder(Embedder):
    """A real :class:`Embedder` over a pixel function.

    ``features``:
        ``"pooled"`` (default): the face's colour mean-pooled over 4x4 cells (48-d); identities
        that differ in colour patterns (``helpers.evaldata``) separate well.
        ``"pixels"``: the grey face pooled to 28x28, mean-removed, then a fixed random projection
        (``seed``) to ``embedding_size`` dimensions; synthetic K-Face photos
        (``helpers.gallery``) separate well.
        ``"colour"``: the face pooled to 16x16 in colour, then a fixed random projection: it sees
        colour, so feeding RGB where BGR is expected changes the embedding, as with a real network.
    ``seed``: which model it is: different seeds have different fingerprints (and projections).
    ``source``: the model file or run it pretends to come from (calibration is stored beside it).
    ``flip``: flip test-time augmentation, as :class:`Embedder` does it.
    ``delay``: seconds to sleep per ``embed`` call (crash and concurrency tests).

    ``calls`` and ``embedded`` count the ``embed`` calls and the faces embedded (caching tests).
    """

    def __init__(
        self,
        features: str = "pooled",
        *,
        source: Path | None = None,
        flip: bool = False,
        embedding_size: int = 64,
        seed: int = 0,
        delay: float = 0.0,
    ):
        if features == "pooled":
            self.projection = None
            size = 3 * POOLED_CELLS * POOLED_CELLS
            digest = "f" * 40 if seed == 0 else hashlib.sha256(f"pooled-{seed}".encode()).hexdigest()
            network = "fake"
        elif features == "pixels":
            rng = np.random.default_rng(seed)
            self.projection = rng.standard_normal((PIXELS_SIDE * PIXELS_SIDE, embedding_size)).astype(np.float32)
            size = embedding_size
            digest = hashlib.sha256(self.projection.tobytes()).hexdigest()
            network = "pixels"
        elif features == "colour":
            rng = np.random.default_rng(seed)
            self.projection = rng.standard_normal((COLOUR_SIDE * COLOUR_SIDE * 3, embedding_size)).astype(np.float32)
            size = embedding_size
            digest = hashlib.sha256(b"colour" + self.projection.tobytes()).hexdigest()
            network = "colour"
        else:
            raise ValueError(f"features must be 'pooled', 'pixels' or 'colour', got {features!r}")
        super().__init__(
            self._features, network=network, embedding_size=size, weights_digest=digest, flip=flip, source=source
        )
        self.features = features
        self.delay = delay
        self.calls = 0
        self.embedded = 0

    def embed(self, faces: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        self.embedded += len(faces)
        return super().embed(faces) if batch_size is None else super().embed(faces, batch_size)

    def _features(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, 112, 112) float32 network input -> (B, D) features."""
        b = x.shape[0]
        if self.features == "colour":
            cell = FACE_SIZE // COLOUR_SIDE
            small = x.reshape(b, 3, COLOUR_SIDE, cell, COLOUR_SIDE, cell).mean(axis=(3, 5)).reshape(b, -1)
            return small @ self.projection
        if self.projection is None:
            cell = FACE_SIZE // POOLED_CELLS
            return x.reshape(b, 3, POOLED_CELLS, cell, POOLED_CELLS, cell).mean(axis=(3, 5)).reshape(b, -1)
        r, g, bl = x[:, 0], x[:, 1], x[:, 2]
        grey = 0.299 * r + 0.587 * g + 0.114 * bl  # (B, 112, 112), as OpenCV's BGR2GRAY
        cell = FACE_SIZE // PIXELS_SIDE
        small = grey.reshape(b, PIXELS_SIDE, cell, PIXELS_SIDE, cell).mean(axis=(2, 4)).reshape(b, -1)
        small = small - small.mean(axis=1, keepdims=True)
        return small @ self.projection
