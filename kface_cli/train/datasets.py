"""Training data as torch Datasets: a folder per identity, or an insightface ``train.rec``.

``open_training_data(path)`` picks the reader from what it finds:

* ``path/train.rec`` (+ ``train.idx``, ``property``): :class:`RecordDataset`;
* otherwise ``path/<identity>/*.jpg`` (e.g. the workspace's ``split/train``): :class:`FolderDataset`,
  classes = the identity folders in sorted order (the same order as ``split/classes.csv``).

Items are ``(image (3, 112, 112) float32 RGB in [-1, 1], label int)`` made by
:func:`kface_cli.face.preprocess.faces_to_input`, the same preprocessing as every other stage; with
``flip=True`` each item is mirrored with probability 1/2 (drawn from torch's RNG, so DataLoader
seeds make it reproducible). Training refuses images that are not aligned-crop squares (112 or 224 px;
``kface crop`` makes them) unless told to resize them (``--resize-images``). ``augment`` (a spec such as
``"jitter,colour"``, see :mod:`kface_cli.train.augment`) perturbs every item drawn; the training
loop reads ``ds[(index, flip, (seed, epoch))]``, whose flip and augmentation depend on nothing else
(not on the worker that reads it), see :meth:`_BaseDataset.__getitem__`.

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


#: Keeps the augmentation's random stream apart from every other stream derived from the seed.
AUGMENT_STREAM = 0x4A7C


def augment_rng(key: Sequence[int], index: int) -> np.random.Generator:
    """The generator of item ``index``'s augmentation under ``key`` (e.g. ``(seed, epoch)``)."""
    return np.random.default_rng([AUGMENT_STREAM, *(int(k) % 2**63 for k in key), index])


class _BaseDataset:
    num_classes: int
    labels: np.ndarray  # (N,) int64
    flip: bool
    augment = None  # an Augment (kface_cli.train.augment), set by open_training_data

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, i):
        """Three ways to read item ``i``:

        * ``ds[(i, flip, key)]``: what the training loop reads: mirrored when ``flip``, augmented
          with a generator seeded by ``key`` (the loop passes ``(seed, epoch)``; the item's index is
          added), so an item's augmentation is a function of (seed, epoch, index) alone and a run
          and its ``--resume`` are exact whatever the number of data workers;
        * ``ds[(i, flip)]``: the face as stored (no augmentation), mirrored when ``flip``: what
          BatchNorm recalibration reads;
        * ``ds[i]``: flip and augmentation drawn from torch's RNG (reproducible under a seed in
          one process only).
        """
        if isinstance(i, tuple):
            if len(i) == 3:
                i, mirror, key = i
                face = self._augmented(int(i), augment_rng(key, int(i)))
            else:
                i, mirror = i
                face = self.image(int(i))
            return _to_item(face, bool(mirror), random=False), int(self.labels[i])
        from kface_cli.train.augment import draw_rng

        return _to_item(self._augmented(i, draw_rng()), self.flip), int(self.labels[i])

    def _augmented(self, i: int, rng: np.random.Generator) -> np.ndarray:
        if not self.augment:
            return self.image(i)
        return self.augment(resize_crop(self.image(i), FACE_SIZE), rng)

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

    def __init__(
        self,
        root: str | Path,
        *,
        flip: bool = True,
        preload: bool | None = None,
        progress: bool = True,
        resize: bool = True,
    ):
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
        if not resize:
            check_crop_sizes(self.root, paths)
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


def check_crop_sizes(root: Path, paths: Sequence[Path]) -> None:
    """Refuse training images that are not aligned-crop squares (112x112, or 224x224 from
    ``kface crop --size 224``): photos that were never cropped would be squashed to 112 px, faces
    and all. Only the file headers are read."""
    from kface_cli.defaults import ALIGNED_CROP_SIDES
    from kface_cli.face.imageio import image_size

    wrong: list[tuple[Path, tuple[int, int]]] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                size = image_size(f.read(1 << 16))
        except OSError:
            continue  # reported when the image is read
        if size is not None and not (size[0] == size[1] and size[0] in ALIGNED_CROP_SIDES):
            wrong.append((path, size))
    if wrong:
        path, (w, h) = wrong[0]
        raise InputError(
            f"{len(wrong)} of {len(paths)} training images in {root} are not {FACE_SIZE}x{FACE_SIZE} face crops "
            f"(e.g. {path}: {w}x{h})",
            hint=f"Crop the faces first: `kface crop {root}` then `kface split --faces <its output>`; "
            "if they are aligned face crops of another size, pass --resize-images.",
        )


def open_training_data(
    path: str | Path, *, flip: bool = True, preload: bool | None = None, augment: str = "", resize: bool = True
):
    """The dataset at ``path``: a ``train.rec`` folder, an identity-folder tree, or
    ``synthetic:<ids>x<images>`` (random data for throughput checks); ``augment``: a spec of
    :mod:`kface_cli.train.augment`. ``resize=False``: a folder's images must be aligned-crop
    squares (:func:`check_crop_sizes`)."""
    from kface_cli.train.augment import parse_augment, resolve_augment

    path_text = str(path)
    is_rec = (Path(path).is_file() and Path(path).suffix == ".rec") or (Path(path) / REC_NAME).is_file()
    augmentation = parse_augment(
        resolve_augment(augment, folder=not (path_text.startswith(SYNTHETIC_PREFIX) or is_rec))
    )
    if path_text.startswith(SYNTHETIC_PREFIX):
        ds: _BaseDataset = synthetic_dataset(path_text, flip=flip)
    elif (Path(path).is_file() and Path(path).suffix == ".rec") or (Path(path) / REC_NAME).is_file():
        ds = RecordDataset(path, flip=flip)
    else:
        ds = FolderDataset(path, flip=flip, preload=preload, resize=resize)
    ds.augment = augmentation if augmentation else None
    return ds
