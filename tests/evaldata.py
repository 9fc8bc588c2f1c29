"""Small synthetic evaluation data for the evaluate tests (not a test module).

Identities are smooth random colour patterns; each image adds condition-dependent noise, and
light L7 ("dark") images are much noisier, so a per-condition breakdown has something to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kface_cli.formats.pairs import Pair, write_pairs_csv


class FakeEmbedder:
    """Honours the Embedder contract: 4x4x3 mean-pooled pixels, centred, L2-normalised (48-d);
    with ``flip``, the pooled face plus its mirror image (like the real flip-sum)."""

    network = "fake"
    embedding_size = 48
    weights_digest = "f" * 40

    def __init__(self, source: Path | None = None, fingerprint: str | None = None, flip: bool = False):
        from kface_cli.embedding.embedder import make_fingerprint

        self.source = source
        self.flip = flip
        self.fingerprint = fingerprint or make_fingerprint(self.weights_digest, flip)
        self.embedded = 0  # faces embedded so far (to check caching)
        self.calls = 0

    def describe(self) -> dict:
        return {
            "network": self.network,
            "embedding_size": self.embedding_size,
            "flip": self.flip,
            "fingerprint": self.fingerprint,
            "source": str(self.source) if self.source else None,
        }

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        faces = np.asarray(faces)
        assert faces.ndim == 4 and faces.shape[1:] == (112, 112, 3) and faces.dtype == np.uint8
        self.calls += 1
        self.embedded += len(faces)
        x = self._pooled(faces) + (self._pooled(faces[:, :, ::-1]) if self.flip else 0)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)).astype(np.float32)

    @staticmethod
    def _pooled(faces: np.ndarray) -> np.ndarray:
        return (
            faces.astype(np.float32).reshape(len(faces), 4, 28, 4, 28, 3).mean(axis=(2, 4)).reshape(len(faces), -1)
            - 127.5
        )


def face_image(rng: np.random.Generator, base: np.ndarray, noise: float) -> np.ndarray:
    img = base + rng.normal(0, noise, base.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_identities(
    root: Path, n_ids: int = 6, lights=("L1", "L7"), cams=("C7", "C9"), seed: int = 0, size: int = 112
) -> dict[str, list[Path]]:
    """``root/<id>/<id>_S001_<L>_E01_<C>.png`` aligned crops, in a folder marked as ``kface crop``
    marks its output (``root/crop.json``: these textures are no faces a detector would find);
    returns id -> paths."""
    import cv2

    from kface_cli.defaults import CROP_SETTINGS_FILE

    root.mkdir(parents=True, exist_ok=True)
    (root / CROP_SETTINGS_FILE).write_text("{}\n", encoding="utf-8")
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for k in range(n_ids):
        ident = f"1906{k:04d}"
        coarse = rng.uniform(30, 225, (4, 4, 3))
        base = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_NEAREST)
        folder = root / ident
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for light in lights:
            for cam in cams:
                # dark L7: much darker and noisier, so it costs accuracy
                img = face_image(rng, base * 0.3, 60.0) if light == "L7" else face_image(rng, base, 8.0)
                p = folder / f"{ident}_S001_{light}_E01_{cam}.png"
                cv2.imwrite(str(p), img)
                paths.append(p)
        out[ident] = paths
    return out


def make_pairs(by_id: dict[str, list[Path]], seed: int = 0) -> list[Pair]:
    """Every same pair within an identity and as many different pairs, in a fixed order."""
    from kface_cli.dataset.codes import parse_face_filename

    rng = np.random.default_rng(seed)
    ids = sorted(by_id)
    same, diff = [], []
    for ident in ids:
        ps = by_id[ident]
        same += [(ps[i], ps[j]) for i in range(len(ps)) for j in range(i + 1, len(ps))]
    while len(diff) < len(same):
        a, b = rng.choice(len(ids), 2, replace=False)
        diff.append((by_id[ids[a]][rng.integers(len(by_id[ids[a]]))], by_id[ids[b]][rng.integers(len(by_id[ids[b]]))]))
    pairs = [Pair(a, b, True, parse_face_filename(a.name), parse_face_filename(b.name)) for a, b in same]
    pairs += [Pair(a, b, False, parse_face_filename(a.name), parse_face_filename(b.name)) for a, b in diff]
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def make_workspace(root: Path, n_ids: int = 6, seed: int = 0) -> Path:
    """A workspace with split/val/<id>/*.png and split/val_pairs.csv."""
    by_id = make_identities(root / "split" / "val", n_ids=n_ids, seed=seed)
    write_pairs_csv(root / "split" / "val_pairs.csv", make_pairs(by_id, seed))
    return root
