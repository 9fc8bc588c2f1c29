"""Tiny synthetic face-like training data for the training tests (not a test module).

Each identity is a random 6x6 colour pattern blown up to 112x112; its images add a random shift,
brightness change and pixel noise. Train and val identities are disjoint, as `kface split` makes
them; val pairs interleave same and different pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _image(proto: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    img = cv2.resize(proto, (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    dx, dy = rng.integers(-4, 5, 2)
    img = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (112, 112), borderMode=cv2.BORDER_REFLECT)
    img = img * rng.uniform(0.7, 1.3) + rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_workspace(root: Path, *, train_ids: int = 6, val_ids: int = 3, per_id: int = 6, seed: int = 0) -> Path:
    """Write ``root/split/{train,val}/<id>/*.png``, ``root/split/val_pairs.csv`` and
    ``root/split/classes.csv``; return root."""
    import cv2

    from kface_cli.formats.pairs import Pair, write_pairs_csv

    rng = np.random.default_rng(seed)
    protos = [rng.integers(0, 255, (6, 6, 3)).astype(np.uint8) for _ in range(train_ids + val_ids)]
    val_images: list[tuple[int, Path]] = []
    for i, proto in enumerate(protos):
        part = "train" if i < train_ids else "val"
        d = root / "split" / part / f"id{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_id):
            p = d / f"id{i:03d}_{k}.png"
            cv2.imwrite(str(p), _image(proto, rng))
            if part == "val":
                val_images.append((i, p))
    same = [(a, b) for x, a in enumerate(val_images) for b in val_images[x + 1 :] if a[0] == b[0]]
    diff = [(a, b) for x, a in enumerate(val_images) for b in val_images[x + 1 :] if a[0] != b[0]]
    pick = rng.choice(len(diff), size=len(same), replace=False)
    pairs = []
    for s, d in zip(same, (diff[j] for j in pick)):
        pairs.append(Pair(s[0][1], s[1][1], True))
        pairs.append(Pair(d[0][1], d[1][1], False))
    write_pairs_csv(root / "split" / "val_pairs.csv", pairs)
    # as `kface split` writes it: it also marks split/train and split/val as aligned crops (these
    # textures are no faces a detector would find)
    classes = "id,label\n" + "".join(f"id{i:03d},{i}\n" for i in range(train_ids))
    (root / "split" / "classes.csv").write_text(classes, encoding="utf-8")
    return root
