"""Helpers shared by the embedder and export tests: small random backbones that behave like real ones."""

from __future__ import annotations

import torch


def calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of real activations: realistic outputs that differ
    between faces, and no denormal floats (which make CPU convolutions 5-10x slower)."""
    from kface_cli.embedding.export import synthetic_faces
    from kface_cli.face.preprocess import faces_to_input

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(faces_to_input(synthetic_faces(8, seed=42))))
    return net.eval()
