"""Faces to embeddings: ``loading`` (every kind of model file, the only ``torch.load``),
``embedder`` (the Embedder and its fingerprint), ``export`` (ONNX/TorchScript), ``calibration``
(thresholds saved beside a model). Nothing heavy is imported here."""
