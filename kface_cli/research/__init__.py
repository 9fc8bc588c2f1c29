"""The ArcFace paper's two other results, on top of the pipeline.

* :mod:`kface_cli.research.clean`: sub-center ArcFace finds noisy training labels (``kface clean``).
* :mod:`kface_cli.research.invert`: faces from embeddings with the BatchNorm-statistics prior
  (``kface invert``).
"""
