"""kface: from the K-Face dataset to a working ArcFace face-identification system.

From Python: ``from kface_cli import api`` (load a model, detect, align, embed, verify, a
Gallery to enroll and identify; see :mod:`kface_cli.api`).

Importing this package is cheap: heavy libraries (torch, mediapipe, faiss, h5py) are imported
only inside the functions that need them, so ``kface --help`` starts fast.
"""

__version__ = "0.1.0"

from kface_cli.errors import KFaceError

__all__ = ["KFaceError", "__version__"]
