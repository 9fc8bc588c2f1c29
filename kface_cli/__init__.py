"""kface: from the K-Face dataset to a working ArcFace face-identification system.

Importing this package is cheap: heavy libraries (torch, mediapipe, faiss, h5py) are imported
only inside the functions that need them, so ``kface --help`` starts fast.
"""

__version__ = "0.1.0"

from kface_cli.errors import KFaceError

__all__ = ["KFaceError", "__version__"]
