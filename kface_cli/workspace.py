"""Where each stage reads and writes inside a workspace folder.

Commands chain without repeating paths: ``--workdir`` (default: ``$KFACE_WORKDIR`` or the current
folder) holds every stage's output at a fixed place::

    raw/<Res>/<ID>/<S>/<L>/<E>/<C>.jpg (+ .txt)      extract
    faces/<Res>/<ID>/<ID>_<S>_<L>_<E>_<C>.jpg        crop (112x112), faces/<Res>/manifest.csv
    faces/<name>/<person>/*.jpg                      crop of a folder of photos SRC=<...>/<name>
    split/train/<ID>/*.jpg, split/val/<ID>/*.jpg     split, split/classes.csv, split/val_pairs.csv
    split/test/<ID>/*.jpg                            split --test-ids: split/test_pairs.csv
    runs/<name>/                                     train (config, backbone.pth, checkpoint.pt, logs)
    gallery.h5 (+ gallery.faiss)                     enroll
    reports/<name>/                                  evaluate
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kface_cli.defaults import SPLIT_CLASSES_FILE
from kface_cli.errors import InputError

# The files of a run folder (runs/<name>/), named once for every module that reads or writes them.
RUN_CONFIG = "config.json"  # the resolved training config
RUN_BACKBONE = "backbone.pth"  # the best backbone: a plain state_dict in insightface's layout
RUN_LAST_BACKBONE = "backbone_last.pth"  # the last epoch's backbone, same layout
RUN_CHECKPOINT = "checkpoint.pt"  # everything needed to resume exactly
RUN_LOG = "log.jsonl"  # one JSON record per step/epoch
RUN_PLOTS = "plots.png"  # loss, learning rate, validation accuracy
RUN_ONNX = "model.onnx"  # kface export's output (--format onnx)
RUN_TORCHSCRIPT = "model.pt"  # kface export's output (--format torchscript)

# The other files of a workspace.
MANIFEST = "manifest.csv"  # faces/<Res>/: one row per crop
CLASSES_CSV = SPLIT_CLASSES_FILE  # split/: training identity -> label
VAL_PAIRS_CSV = "val_pairs.csv"  # split/: validation pairs
TEST_PAIRS_CSV = "test_pairs.csv"  # split/: test pairs (``kface split --test-ids``)
GALLERY_FILE = "gallery.h5"


def user_cache_dir() -> Path:
    """The platform's user cache folder for kface (Linux: $XDG_CACHE_HOME/kface or ~/.cache/kface),
    the default of :func:`cache_dir` and of the model packs' $KFACE_HOME."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("kface", appauthor=False))


def cache_dir() -> Path:
    """kface's cache of things made once and used again (ONNX Runtime's graphs, index digests):
    $KFACE_CACHE, else :func:`user_cache_dir`."""
    env = os.environ.get("KFACE_CACHE")
    return Path(env).expanduser() if env else user_cache_dir()


RESOLUTIONS = ("High", "Middle", "Low")
DEFAULT_RESOLUTION = "Middle"


def normalise_resolution(res: str) -> str:
    """``middle``, ``Middle``, ``Middle_Resolution`` -> ``Middle``."""
    key = res.strip().split("_")[0].capitalize()
    if key not in RESOLUTIONS:
        raise InputError(f"{res!r} is not a K-Face resolution", hint=f"Use one of {', '.join(RESOLUTIONS)}.")
    return key


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, workdir: str | Path | None = None) -> Workspace:
        """``--workdir`` if given, else ``$KFACE_WORKDIR``, else the current folder."""
        chosen = workdir if workdir is not None else os.environ.get("KFACE_WORKDIR") or "."
        return cls(Path(chosen).expanduser().resolve())

    # stage outputs -------------------------------------------------------------------------
    def raw(self, res: str) -> Path:
        return self.root / "raw" / normalise_resolution(res)

    def faces(self, res: str) -> Path:
        return self.root / "faces" / normalise_resolution(res)

    def photo_faces(self, name: str) -> Path:
        """Crops of a folder of one's own photos (``kface crop SRC``): ``faces/<SRC folder name>``."""
        return self.root / "faces" / name

    def manifest(self, res: str) -> Path:
        return self.faces(res) / MANIFEST

    @property
    def split(self) -> Path:
        return self.root / "split"

    @property
    def train_dir(self) -> Path:
        return self.split / "train"

    @property
    def val_dir(self) -> Path:
        return self.split / "val"

    @property
    def classes_csv(self) -> Path:
        return self.split / CLASSES_CSV

    @property
    def val_pairs(self) -> Path:
        return self.split / VAL_PAIRS_CSV

    @property
    def test_dir(self) -> Path:
        return self.split / "test"

    @property
    def test_pairs(self) -> Path:
        return self.split / TEST_PAIRS_CSV

    def part_dir(self, part: str) -> Path:
        """``split/val`` or ``split/test``."""
        return self.test_dir if part == "test" else self.val_dir

    def part_pairs(self, part: str) -> Path:
        """``split/val_pairs.csv`` or ``split/test_pairs.csv``."""
        return self.test_pairs if part == "test" else self.val_pairs

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY_FILE

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def latest_run(self) -> Path | None:
        """The most recently modified run folder that holds a ``backbone.pth``, or None."""
        if not self.runs.is_dir():
            return None
        runs = [p for p in self.runs.iterdir() if (p / RUN_BACKBONE).is_file()]
        if not runs:
            return None
        return max(runs, key=lambda p: (p / RUN_BACKBONE).stat().st_mtime)

    def require(self, path: Path, what: str, produced_by: str) -> Path:
        """Return ``path`` if it exists, else raise a clear error naming the stage that makes it."""
        if not path.exists():
            raise InputError(
                f"{what} not found: {path}", hint=f"Run `{produced_by}` first, or pass the path explicitly."
            )
        return path
