"""Synthetic K-Face photos and people folders, and a detector that reads their sidecars (gallery,
deployment and API tests; their embedder is ``helpers.embedders.FakeEmbedder("pixels")``, the CLI
tests use a real MobileFaceNet file, the ``mbf_model`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def render_photo(path: Path, identity: str, codes=CODES[0], res: str = "Low", sidecar: bool = True) -> Path:
    """Write a synthetic K-Face photo of ``identity`` (an 8-digit K-Face ID) and its .txt sidecar."""
    from kface_cli.dataset.annotation import format_annotation
    from kface_cli.face.imageio import write_image
    from kface_cli.synth.generator import render_face
    from kface_cli.synth.identity import make_identity

    face = render_face(make_identity(identity), *codes, res)
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
