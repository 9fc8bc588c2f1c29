"""iresnet: the state_dict must be insightface's, key for key and shape for shape."""

from __future__ import annotations

import pytest
import torch

from kface_cli.models.registry import get_backbone

BLOCKS = {
    "r18": [2, 2, 2, 2],
    "r34": [3, 4, 6, 3],
    "r50": [3, 4, 14, 3],
    "r100": [3, 13, 30, 3],
    "r200": [6, 26, 60, 6],
}
WIDTHS = [64, 128, 256, 512]


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def insightface_layout(blocks: list[int], emb: int = 512) -> dict[str, tuple[int, ...]]:
    """The expected keys and shapes, written from insightface-compat.md (independent of our code)."""
    want: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "prelu.weight": (64,)}
    cin = 64
    for s, (n, w) in enumerate(zip(blocks, WIDTHS), start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            c_in = cin if i == 0 else w
            want.update(_bn(f"{p}.bn1", c_in))
            want[f"{p}.conv1.weight"] = (w, c_in, 3, 3)
            want.update(_bn(f"{p}.bn2", w))
            want[f"{p}.prelu.weight"] = (w,)
            want[f"{p}.conv2.weight"] = (w, w, 3, 3)
            want.update(_bn(f"{p}.bn3", w))
            if i == 0:
                want[f"{p}.downsample.0.weight"] = (w, c_in, 1, 1)
                want.update(_bn(f"{p}.downsample.1", w))
        cin = w
    want.update(_bn("bn2", 512))
    want["fc.weight"] = (emb, 512 * 7 * 7)
    want["fc.bias"] = (emb,)
    want.update(_bn("features", emb))
    return want


@pytest.mark.parametrize("name", list(BLOCKS))
def test_state_dict_matches_insightface_layout(name):
    with torch.device("meta"):  # no memory, no time, even for r200
        model = get_backbone(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = insightface_layout(BLOCKS[name])
    assert list(got) == list(want), f"key order/names differ: {set(got) ^ set(want)}"
    assert got == want
    assert got["conv1.weight"] == (64, 3, 3, 3) and got["fc.weight"] == (512, 25088)
    assert len(got) == 19 + 18 * sum(BLOCKS[name]) + 6 * 4


def test_embedding_size_changes_fc_and_features_only():
    with torch.device("meta"):
        model = get_backbone("r34", embedding_size=128)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == insightface_layout(BLOCKS["r34"], emb=128)


@pytest.mark.slow
def test_insightface_style_state_dict_loads_strictly_and_reproduces_output():
    torch.manual_seed(0)
    a = get_backbone("r18").eval()
    # An insightface file is a plain dict of tensors: round-trip through one.
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    b = get_backbone("iresnet18")
    b.load_state_dict(sd, strict=True)
    b.eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == (2, 512)
    torch.testing.assert_close(ya, yb)


def test_features_weight_fixed_and_not_trained():
    model = get_backbone("r18", embedding_size=64)
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)
    assert model.features.bias.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "features.weight" not in trainable and "fc.weight" in trainable


def test_fp16_runs_trunk_under_autocast_and_fc_in_fp32():
    # small input and widths keep bfloat16-on-CPU quick; the layout is the same code path
    model = get_backbone(
        "r18", embedding_size=32, fp16=True, autocast_dtype="bfloat16", input_size=32, widths=(8, 16, 32, 64)
    ).eval()
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o.dtype))
    model.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("fc", o.dtype))
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 32, 32))
    assert seen == {"layer4": torch.bfloat16, "fc": torch.float32}
    assert y.dtype == torch.float32


def test_block_order_has_no_activation_after_addition():
    # A block with zeroed bn3 must be exactly its shortcut (no activation after the sum).
    model = get_backbone("r18").eval()
    block = model.layer1[1]
    torch.nn.init.zeros_(block.bn3.weight)
    torch.nn.init.zeros_(block.bn3.bias)
    x = torch.randn(1, 64, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
