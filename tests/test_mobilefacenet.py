"""MobileFaceNet: insightface's mbf layout, and kface's cheaper mbf_small."""

from __future__ import annotations

import pytest
import torch

from kface_cli.models.registry import get_backbone


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_mbf_keys_and_shapes_follow_insightface():
    with torch.device("meta"):
        got = _shapes(get_backbone("mbf"))
    # ConvBlock = conv + BN(5) + PReLU = 7 keys; LinearBlock = 6; DepthWise = 7 + 7 + 6 = 20.
    # layers 0,1 (7 each), DW, 4 res, DW, 6 res, DW, 2 res (20 each), conv_sep 7, GDC 6 + 1 + 5.
    assert len(got) == 7 + 7 + 20 * (1 + 4 + 1 + 6 + 1 + 2) + 7 + 12
    expected = {
        "layers.0.layers.0.weight": (128, 3, 3, 3),  # stem 3 -> 64*scale, stride 2
        "layers.0.layers.2.weight": (128,),  # PReLU
        "layers.1.layers.0.weight": (128, 2, 3, 3),  # groups=64
        "layers.2.layers.0.layers.0.weight": (128, 128, 1, 1),  # DepthWise expand
        "layers.2.layers.1.layers.0.weight": (128, 1, 3, 3),  # depthwise
        "layers.2.layers.2.layers.1.running_var": (128,),  # LinearBlock BN, no PReLU
        "layers.3.layers.3.layers.2.layers.0.weight": (128, 128, 1, 1),  # 4th residual unit
        "layers.4.layers.0.layers.0.weight": (256, 128, 1, 1),
        "layers.4.layers.2.layers.0.weight": (256, 256, 1, 1),
        "layers.5.layers.5.layers.1.layers.0.weight": (256, 1, 3, 3),  # 6th residual unit
        "layers.6.layers.0.layers.0.weight": (512, 256, 1, 1),
        "layers.7.layers.1.layers.0.layers.0.weight": (256, 256, 1, 1),
        "conv_sep.layers.0.weight": (512, 256, 1, 1),
        "features.layers.0.layers.0.weight": (512, 1, 7, 7),  # GDC
        "features.layers.2.weight": (512, 512),  # Linear, no bias
        "features.layers.3.running_mean": (512,),
    }
    for key, shape in expected.items():
        assert got.get(key) == shape, key
    assert "features.layers.2.bias" not in got
    assert "layers.3.layers.4.layers.0.layers.0.weight" not in got  # exactly 4 units in stage 1
    assert not any(k.startswith("layers.8") for k in got)


@pytest.mark.slow
def test_mbf_forward_shape_and_params():
    torch.manual_seed(0)
    model = get_backbone("mobilefacenet", embedding_size=128).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.0e6 < n_params < 2.5e6, n_params
    with torch.no_grad():
        y = model(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert y.shape == (2, 128) and torch.isfinite(y).all()


@pytest.mark.slow
def test_mbf_small_is_cheaper_and_loads_strictly():
    small = get_backbone("mbf_small", embedding_size=64)
    full = get_backbone("mbf", embedding_size=64)
    n_small = sum(p.numel() for p in small.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert n_small < n_full / 2
    again = get_backbone("mbf_small", embedding_size=64)
    again.load_state_dict(small.state_dict(), strict=True)
    small.eval(), again.eval()
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(small(x), again(x))
