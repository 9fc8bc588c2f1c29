"""Training-time augmentations of aligned faces, for small real datasets.

A spec string names them (``kface train --augment jitter,colour=0.3``, or ``augment = "..."`` in a
TOML config); a bare name takes its default strength, ``name=value`` sets it:

``jitter`` (landmark jitter, default 0.05)
    Each of the five landmarks moves by Gaussian noise of this standard deviation (a fraction of
    the inter-ocular distance) before the alignment: the model sees faces aligned as imprecisely
    as a detector aligns them. Any perturbation of the points changes the similarity warp, and a
    similarity warp of the photo is a similarity warp of its aligned crop, so it is applied to the
    crop (borders replicate the crop's edge, where the photo would have more of the same).
``scale`` (default 0.05) and ``shift`` (default 0.03)
    Uniform scale change of up to +-``scale`` and translation of up to +-``shift`` of the crop side.
``colour`` (default 0.2)
    Brightness (+-``colour`` x 64 levels), contrast and saturation (x 1 +- ``colour``).
``blur`` (default 0.2)
    Probability of a Gaussian blur of sigma 0.5-1.5 px (out-of-focus and low-resolution photos).
``grey`` (default 0.1)
    Probability of a greyscale copy (old photos, infrared cameras).

Random numbers: the training loop seeds each item's generator with (seed, epoch, item index)
(:func:`kface_cli.train.datasets.augment_rng`), so an item is augmented the same way whichever
DataLoader worker reads it, and ``--resume`` continues exactly. Reading ``dataset[i]`` by hand
draws from torch's generator instead (:func:`draw_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kface_cli.errors import KFaceError

#: name -> (default strength, upper bound, what it does): the one list of augmentations.
AUGMENTATIONS: dict[str, tuple[float, float, str]] = {
    "jitter": (0.05, 0.3, "landmark noise, fraction of the eye distance"),
    "scale": (0.05, 0.3, "scale change, fraction"),
    "shift": (0.03, 0.2, "translation, fraction of the side"),
    "colour": (0.2, 1.0, "brightness, contrast, saturation"),
    "blur": (0.2, 1.0, "probability of a blur"),
    "grey": (0.1, 1.0, "probability of greyscale"),
}
#: Inter-ocular distance of the ArcFace template, pixels at 112x112.
_TEMPLATE_IOD = 35.24
_BLUR_SIGMA = (0.5, 1.5)
_BRIGHTNESS_LEVELS = 64.0


@dataclass(frozen=True)
class Augment:
    """Strengths of each augmentation (0: off); see the module docstring."""

    jitter: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    colour: float = 0.0
    blur: float = 0.0
    grey: float = 0.0

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))

    def spec(self) -> str:
        """The canonical spec string (``""`` when nothing is on)."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) > 0)

    def __call__(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An augmented copy of a (S, S, 3) BGR uint8 aligned face."""
        out = self._geometric(face, rng) if (self.jitter or self.scale or self.shift) else face
        if self.colour or self.blur or self.grey:
            out = self._photometric(out, rng)
        return out

    def _geometric(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        from kface_cli.face.align import template_for, umeyama_similarity

        side = face.shape[0]
        template = template_for(side)
        moved = template + rng.normal(0.0, self.jitter * _TEMPLATE_IOD * side / 112, template.shape)
        centre = template.mean(axis=0)
        moved = centre + (moved - centre) * (1.0 + rng.uniform(-self.scale, self.scale))
        moved += rng.uniform(-self.shift, self.shift, 2) * side
        # the points were found at `moved`: the warp that brings them onto the template
        m = umeyama_similarity(moved, template)
        return cv2.warpAffine(face, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _photometric(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        x = face.astype(np.float32)
        if self.colour:
            c = self.colour
            grey = x.mean(axis=2, keepdims=True)
            x = grey + (x - grey) * (1.0 + rng.uniform(-c, c))  # saturation
            x = (x - x.mean()) * (1.0 + rng.uniform(-c, c)) + x.mean()  # contrast
            x += rng.uniform(-c, c) * _BRIGHTNESS_LEVELS  # brightness
        if self.grey and rng.random() < self.grey:
            x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
        if self.blur and rng.random() < self.blur:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*_BLUR_SIGMA))
        return np.clip(x, 0, 255).round().astype(np.uint8)


#: ``--augment auto`` on a folder of faces (small real datasets): what generalised to unseen real
#: people (a MobileFaceNet trained 15 epochs from scratch: 92.7% without, 95.4% with it, on 10
#: people it never saw; docs/evaluate.md). On ``train.rec`` (large curated sets, insightface
#: trains them with flips only) and ``synthetic:`` data: none.
FOLDER_DEFAULT = "jitter,scale,shift,colour"


def resolve_augment(spec: str | None, *, folder: bool) -> str:
    """``auto`` -> :data:`FOLDER_DEFAULT` on a folder of faces, ``none`` otherwise; any other spec
    as given (checked)."""
    if spec is None or spec.strip().lower() == "auto":
        return FOLDER_DEFAULT if folder else "none"
    parse_augment(spec)  # a bad spec fails here, before any training
    return spec


def parse_augment(spec: str | None) -> Augment:
    """``"jitter,colour=0.3"`` -> :class:`Augment`; ``""``/``None``/``"none"``: nothing."""
    if not spec or spec.strip().lower() == "none":
        return Augment()
    values: dict[str, float] = {}
    names = ", ".join(AUGMENTATIONS)
    for token in spec.split(","):
        name, _, value = token.strip().partition("=")
        name = name.strip().lower()
        if name not in AUGMENTATIONS:
            raise KFaceError(f"unknown augmentation {name!r} in {spec!r}", hint=f"Use some of: {names}.")
        default, upper, _ = AUGMENTATIONS[name]
        try:
            strength = float(value) if value.strip() else default
        except ValueError:
            raise KFaceError(
                f"augmentation {name}: {value!r} is not a number", hint=f"e.g. {name}={default:g}"
            ) from None
        if not 0.0 <= strength <= upper:
            raise KFaceError(
                f"augmentation {name}={strength:g} is outside [0, {upper:g}]", hint=f"e.g. {name}={default:g}"
            )
        values[name] = strength
    return Augment(**values)


def draw_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG (reproducible under the run's seed, per worker)."""
    import torch

    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
