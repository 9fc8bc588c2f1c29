"""Helpers shared by the test modules (not tests): small synthetic data and one fake embedder.

Test modules import the plain functions and classes from here (``from helpers.gallery import
render_photo``); the fixtures built on them live in ``tests/conftest.py``.

* :mod:`helpers.embedders`  ``FakeEmbedder``, the one stand-in for a face model
* :mod:`helpers.evaldata`   identities with per-condition noise, pairs, an evaluation workspace
* :mod:`helpers.gallery`    synthetic K-Face photos, people folders, a detector that reads sidecars
* :mod:`helpers.geometry`   2-D similarity transforms
* :mod:`helpers.hub`        tiny model packs and a local HTTP server that serves them
* :mod:`helpers.models`     small random backbones with real BatchNorm statistics, model files
* :mod:`helpers.synth`      small synthetic K-Face trees (zips), generated once per process
* :mod:`helpers.training`   tiny training/validation data for the training tests
"""
