"""Training data as torch Datasets: a folder per identity, or an insightface ``train.rec``.

``open_training_data(path)`` picks the reader from what it finds:

* ``path/train.rec`` (+ ``train.idx``, ``property``): :class:`RecordDataset`;
* otherwise ``path/<identity>/*.jpg`` (e.g. the workspace's ``split/train``): :class:`FolderDataset`,
  classes = the identity folders in sorted order (the same order as ``split/classes.csv``).

Items are ``(image (3, 112, 112) float32 RGB in [-1, 1], label int)`` made by
:func:`kface_cli.face.preprocess.faces_to_input`, the same preprocessing as every other stage; with
``flip=True`` each item is mirrored with probability 1/2 (drawn from torch's RNG, so DataLoader
seeds make it reproducible). Images that are not 112x112 are resized. ``augment`` (a spec such as
``"jitter,colour"``, see :mod:`kface_cli.train.augment`) perturbs every item drawn.

Small folder datasets (up to ``PRELOAD_MAX_IMAGES``) are decoded once into memory: on a laptop
CPU, JPEG decoding would otherwise compete with training for the same cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kface_cli.defaults import FACE_SIZE
from kface_cli.errors import InputError
from kface_cli.face.align import resize_crop

PRELOAD_MAX_IMAGES = 20_000  # ~750 MB of 112x112x3 uint8
REC_NAME = "train.rec"


def _to_item(face_bgr: np.ndarray, flip: bool, random: bool = True):
    """(112,112,3) BGR uint8 -> (3,112,112) float32 tensor, mirrored if ``flip`` (with p=1/2
    when ``random``)."""
    import torch

    from kface_cli.face.preprocess import faces_to_input

    face = resize_crop(face_bgr, FACE_SIZE)
    if flip and (not random or bool(torch.rand(()) < 0.5)):
        face = face[:, ::-1]  # mirrored as uint8, before the float conversion: the same values,
        # and no torch op on a small tensor (in a process with several torch threads each one
        # cost 1-2 ms in the thread pool, against 0.08 ms for the whole item)
    return torch.from_numpy(faces_to_input(face[None])[0])  # (3, 112, 112)


class _BaseDataset:
    num_classes: int
    labels: np.ndarray  # (N,) int64
    flip: bool
    augment = None  # an Augment (kface_cli.train.augment), set by open_training_data

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, i):
        """``ds[i]`` (flip drawn from torch's RNG when ``flip``) or ``ds[(i, flip)]`` (flip given:
        what the training loop does, so that runs and resumes are exact whatever the workers)."""
        if isinstance(i, tuple):
            i, mirror = i
            return _to_item(self._face(int(i)), bool(mirror), random=False), int(self.labels[i])
        return _to_item(self._face(i), self.flip), int(self.labels[i])

    def _face(self, i: int) -> np.ndarray:
        if not self.augment:
            return self.image(i)
        from kface_cli.train.augment import draw_rng

        return self.augment(resize_crop(self.image(i), FACE_SIZE), draw_rng())

    def image(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return f"{len(self)} images of {self.num_classes} identities"


class ArrayDataset(_BaseDataset):
    """Images already in memory: (N, 112, 112, 3) BGR uint8 and (N,) labels (tests, benchmarks)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], *, num_classes: int | None = None, flip: bool = True):
        assert images.ndim == 4 and images.shape[-1] == 3 and len(images) == len(labels), (
            "images (N,H,W,3) and N labels"
        )
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes if num_classes is not None else self.labels.max() + 1)
        self.flip = flip
        self.source = "<memory>"

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


class FolderDataset(_BaseDataset):
    """``root/<identity>/<image>``: one folder per identity, labels in sorted folder order."""

    def __init__(self, root: str | Path, *, flip: bool = True, preload: bool | None = None, progress: bool = True):
        from kface_cli.face.imageio import is_image_file

        self.root = Path(root)
        self.source = str(self.root)
        if not self.root.is_dir():
            raise InputError(
                f"training data folder not found: {self.root}", hint="Run `kface split` first, or pass --data."
            )
        identities = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths: list[Path] = []
        labels: list[int] = []
        self.classes: list[str] = []
        for d in identities:
            files = sorted(f for f in d.iterdir() if f.is_file() and is_image_file(f))
            if not files:
                continue
            label = len(self.classes)
            self.classes.append(d.name)
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise InputError(
                f"no identity folders with images in {self.root}",
                hint="Expected ROOT/<identity>/<image>.jpg (the layout `kface split` writes) or ROOT/train.rec.",
            )
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)
        self.flip = flip
        self._cache: np.ndarray | None = None
        if preload if preload is not None else len(paths) <= PRELOAD_MAX_IMAGES:
            self._preload(progress)

    def _load(self, i: int) -> np.ndarray:
        from kface_cli.face.imageio import read_image

        return resize_crop(read_image(self.paths[i]), FACE_SIZE)

    def _preload(self, progress: bool) -> None:
        from kface_cli.console import progress as bar_ctx

        cache = np.empty((len(self.paths), FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
        with bar_ctx("Loading faces", total=len(self.paths) if progress else None) as bar:
            for i in range(len(self.paths)):
                cache[i] = self._load(i)
                bar.advance()
        self._cache = cache

    def image(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else self._load(i)


class RecordDataset(_BaseDataset):
    """insightface ``train.rec``/``train.idx`` (+ ``property``) in ``folder``."""

    def __init__(self, folder: str | Path, *, flip: bool = True):
        from kface_cli.formats.recordio import RecordIOReader, dataset_index

        folder = Path(folder)
        rec = folder / REC_NAME if folder.is_dir() else folder
        self.source = str(rec)
        self.reader = RecordIOReader(rec)
        index = dataset_index(self.reader, rec.parent)
        self.keys = np.asarray(index.image_keys, dtype=np.int64)
        self.labels = self.reader.labels(self.keys)  # record headers only: no image is read
        self.num_classes = int(index.num_classes)
        if len(self.labels) and int(self.labels.max()) >= self.num_classes:
            raise InputError(
                f"{rec}: label {int(self.labels.max())} but only {self.num_classes} classes",
                hint=f"Fix the `property` file (num_classes,{FACE_SIZE},{FACE_SIZE}).",
            )
        self.flip = flip

    def image(self, i: int) -> np.ndarray:
        from kface_cli.face.imageio import decode_image
        from kface_cli.formats.recordio import unpack

        _, data = unpack(self.reader.read(int(self.keys[i])))
        return decode_image(data, f"{self.source}#{int(self.keys[i])}")


SYNTHETIC_PREFIX = "synthetic:"


def synthetic_dataset(spec: str, *, flip: bool = True, seed: int = 0) -> ArrayDataset:
    """``synthetic:<ids>x<images>`` (e.g. ``synthetic:100x10``): random faces of random classes,
    generated in memory. For throughput checks and smoke tests only; nothing useful is learned."""
    try:
        ids, per_id = (int(v) for v in spec[len(SYNTHETIC_PREFIX) :].lower().split("x"))
        assert ids >= 2 and per_id >= 1
    except (ValueError, AssertionError):
        raise InputError(
            f"bad synthetic data spec {spec!r}",
            hint="Use synthetic:<identities>x<images per identity>, e.g. synthetic:100x10.",
        ) from None
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (ids * per_id, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.repeat(np.arange(ids), per_id), num_classes=ids, flip=flip)
    ds.source = spec
    return ds


def open_training_data(path: str | Path, *, flip: bool = True, preload: bool | None = None, augment: str = ""):
    """The dataset at ``path``: a ``train.rec`` folder, an identity-folder tree, or
    ``synthetic:<ids>x<images>`` (random data for throughput checks); ``augment``: a spec of
    :mod:`kface_cli.train.augment`."""
    from kface_cli.train.augment import parse_augment

    augmentation = parse_augment(augment)
    path_text = str(path)
    if path_text.startswith(SYNTHETIC_PREFIX):
        ds: _BaseDataset = synthetic_dataset(path_text, flip=flip)
    elif (Path(path).is_file() and Path(path).suffix == ".rec") or (Path(path) / REC_NAME).is_file():
        ds = RecordDataset(path, flip=flip)
    else:
        ds = FolderDataset(path, flip=flip, preload=preload)
    ds.augment = augmentation if augmentation else None
    return ds
