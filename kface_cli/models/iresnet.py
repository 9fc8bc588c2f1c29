"""insightface's iresnet (r18, r34, r50, r100, r200), key-for-key and shape-for-shape.

An insightface ``backbone.pth`` loads into these with ``load_state_dict(strict=True)`` and gives
the same embeddings. The layout (see insightface-compat.md)::

    conv1 [64,3,3,3] -> bn1 -> prelu                       112x112, 64 ch
    layer1..layer4: IBasicBlock x layers[i]               each stage starts with stride 2
        block: bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, stage stride) -> bn3, + shortcut
        block 0 of each stage: downsample.0 (1x1 conv, stride 2) + downsample.1 (BatchNorm2d)
    bn2 (BatchNorm2d 512) -> flatten -> dropout -> fc [emb, 512*7*7] -> features (BatchNorm1d emb)

``features.weight`` is fixed at 1.0 and never trained (``requires_grad=False``); its bias trains.
With ``fp16=True`` only the layers before ``fc`` run under autocast; ``fc`` and ``features`` run
in float32 (what insightface does; it keeps the embedding precise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kface_cli.defaults import FACE_SIZE
from kface_cli.models.registry import register_backbone

BN_EPS = 1e-5  # insightface uses 1e-5 everywhere (PyTorch's default too; stated for clarity)


@dataclass(frozen=True)
class IResNetConfig:
    """Everything that defines an iresnet; stored in run configs and rebuilt from them."""

    layers: tuple[int, int, int, int]  # blocks per stage
    embedding_size: int = 512
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # channels per stage (insightface's)
    input_size: int = FACE_SIZE  # square input side; the trunk divides it by 16 (112 -> 7)
    dropout: float = 0.0  # before fc; insightface's default is 0
    fp16: bool = False  # autocast (float16) the layers before fc
    autocast_dtype: str = "float16"  # "bfloat16" for bf16 training

    def build(self) -> IResNet:
        return IResNet(self)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style block: bn1 -> conv1 -> bn2 -> prelu -> conv2 -> bn3, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, cin, H, W) -> (N, cout, H/s, W/s)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut  # no activation after the addition


class IResNet(nn.Module):
    """The iresnet trunk + embedding head. ``forward``: (N,3,112,112) in [-1,1] -> (N, emb)."""

    def __init__(self, config: IResNetConfig):
        super().__init__()
        assert config.input_size % 16 == 0, f"input_size must be a multiple of 16, got {config.input_size}"
        assert config.autocast_dtype in ("float16", "bfloat16"), (
            f"autocast_dtype: float16 or bfloat16, not {config.autocast_dtype!r}"
        )
        self.config = config
        w = config.widths
        self.conv1 = conv3x3(3, w[0])
        self.bn1 = nn.BatchNorm2d(w[0], eps=BN_EPS)
        self.prelu = nn.PReLU(w[0])
        cin = w[0]
        for i, (width, blocks) in enumerate(zip(w, config.layers), start=1):
            stage = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            cin = width
        self.bn2 = nn.BatchNorm2d(w[-1], eps=BN_EPS)
        self.dropout = nn.Dropout(p=config.dropout, inplace=True)
        side = config.input_size // 16
        self.fc = nn.Linear(w[-1] * side * side, config.embedding_size)
        self.features = nn.BatchNorm1d(config.embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface: conv weights N(0, 0.1), BN weight 1 / bias 0; features.weight frozen at 1.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        self.features.weight.requires_grad = False

    @property
    def stages(self) -> list[nn.Module]:
        """Modules in input order, for ``--freeze N`` (0 = stem, 1..4 = layer1..layer4)."""
        return [nn.ModuleList([self.conv1, self.bn1, self.prelu]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) -> flattened trunk output (N, 512*7*7)."""
        x = self.prelu(self.bn1(self.conv1(x)))  # (N, 64, 112, 112)
        x = self.layer1(x)  # (N, 64, 56, 56)
        x = self.layer2(x)  # (N, 128, 28, 28)
        x = self.layer3(x)  # (N, 256, 14, 14)
        x = self.layer4(x)  # (N, 512, 7, 7)
        x = self.bn2(x)
        return self.dropout(torch.flatten(x, 1))  # (N, 25088)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float16 if self.config.autocast_dtype == "float16" else torch.bfloat16
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=self.config.fp16):
            x = self.forward_features(x)
        x = self.fc(x.float())  # (N, emb), float32 even under fp16
        return self.features(x)  # (N, emb), not normalised


def _cfg(layers: tuple[int, int, int, int], embedding_size: int, **overrides) -> IResNetConfig:
    return IResNetConfig(layers=layers, embedding_size=embedding_size, **overrides)


@register_backbone("r18", aliases=("iresnet18", "resnet18"))
def r18(embedding_size: int = 512, **overrides) -> IResNetConfig:
    """iresnet18: [2,2,2,2] blocks, 24M parameters."""
    return _cfg((2, 2, 2, 2), embedding_size, **overrides)


@register_backbone("r34", aliases=("iresnet34", "resnet34"))
def r34(embedding_size: int = 512, **overrides) -> IResNetConfig:
    """iresnet34: [3,4,6,3] blocks, 34M parameters."""
    return _cfg((3, 4, 6, 3), embedding_size, **overrides)


@register_backbone("r50", aliases=("iresnet50", "resnet50"))
def r50(embedding_size: int = 512, **overrides) -> IResNetConfig:
    """iresnet50: [3,4,14,3] blocks, 44M parameters (the tutorial's backbone)."""
    return _cfg((3, 4, 14, 3), embedding_size, **overrides)


@register_backbone("r100", aliases=("iresnet100", "resnet100"))
def r100(embedding_size: int = 512, **overrides) -> IResNetConfig:
    """iresnet100: [3,13,30,3] blocks, 65M parameters."""
    return _cfg((3, 13, 30, 3), embedding_size, **overrides)


@register_backbone("r200", aliases=("iresnet200", "resnet200"))
def r200(embedding_size: int = 512, **overrides) -> IResNetConfig:
    """iresnet200: [6,26,60,6] blocks, 110M parameters."""
    return _cfg((6, 26, 60, 6), embedding_size, **overrides)
