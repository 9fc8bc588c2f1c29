"""Embedder: aligned faces in, unit embeddings out (module embedders, flip TTA, modes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import EMB, NETWORK, unit

from kface_cli.embedding.embedder import embedder_from_module


def test_module_embedder_is_normalised_and_matches_torch(backbone, faces, reference):
    emb = embedder_from_module(backbone, network=NETWORK)
    out = emb.embed(faces)
    assert out.shape == (5, EMB) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, unit(reference), atol=1e-5)
    assert emb.embedding_size == EMB and emb.network == NETWORK and emb.backend == "torch"
    # batching does not change results; one face (H, W, 3) is accepted too
    np.testing.assert_allclose(emb.embed(faces, batch_size=3), out, atol=1e-5)
    np.testing.assert_allclose(emb.embed(faces[2])[0], out[2], atol=1e-5)
    assert emb.embed(faces[:0]).shape == (0, EMB)


def test_flip_tta_sums_face_and_mirror(backbone, faces, reference):
    emb = embedder_from_module(backbone, flip=True)
    mirrored = embedder_from_module(backbone).embed(faces[:, :, ::-1])  # normalised; need raw: recompute
    x = faces[:, :, ::-1][..., ::-1].astype(np.float32)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        raw_mirror = backbone(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(unit(raw_mirror), mirrored, atol=1e-5)
    np.testing.assert_allclose(emb.embed(faces), unit(reference + raw_mirror), atol=1e-5)


@pytest.mark.slow
def test_training_mode_is_restored(backbone, faces):
    backbone.train()
    try:
        embedder_from_module(backbone).embed(faces[:2])
        assert backbone.training
    finally:
        backbone.eval()
