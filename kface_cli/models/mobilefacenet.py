"""MobileFaceNet ("mbf"): insightface's small backbone for CPUs (about 1M parameters at width 2).

The state_dict layout follows insightface's ``backbones/mobilefacenet.py`` so its ``mbf``
weights load with ``strict=True``::

    layers.0   ConvBlock 3 -> 64*scale, 3x3 stride 2                        112 -> 56
    layers.1   ConvBlock 64*scale, 3x3 depthwise-ish (groups=64)  (blocks[0] == 1)
               or Residual(blocks[0]) of DepthWise units
    layers.2   DepthWise 64*s -> 64*s, stride 2, expansion 128              56 -> 28
    layers.3   Residual x blocks[1], expansion 128
    layers.4   DepthWise 64*s -> 128*s, stride 2, expansion 256             28 -> 14
    layers.5   Residual x blocks[2], expansion 256
    layers.6   DepthWise 128*s -> 128*s, stride 2, expansion 512            14 -> 7
    layers.7   Residual x blocks[3], expansion 256
    conv_sep   ConvBlock 128*s -> 512, 1x1
    features   GDC: LinearBlock 512 7x7 depthwise -> flatten -> Linear(512, emb, no bias) -> BatchNorm1d

Each ``ConvBlock`` is ``layers = Sequential(Conv2d, BatchNorm2d, PReLU)``; a ``LinearBlock`` the
same without PReLU; a ``DepthWise`` unit is ``layers = Sequential(ConvBlock 1x1 -> expansion,
ConvBlock kxk depthwise, LinearBlock 1x1 -> out)`` with an identity shortcut inside ``Residual``.

``mbf_small`` (kface's own, not in insightface) is width ``scale=1`` with expansions halved,
fewer blocks, and the 112x112 input resized to 64x64 inside the network (GDC kernel 4): about
10x cheaper than ``mbf``, for the CPU demo and tests. It still takes (N, 3, 112, 112).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kface_cli.defaults import FACE_SIZE
from kface_cli.models.registry import register_backbone


@dataclass(frozen=True)
class MobileFaceNetConfig:
    embedding_size: int = 512
    blocks: tuple[int, int, int, int] = (1, 4, 6, 2)  # residual units per stage (insightface's mbf)
    scale: int = 2  # width multiplier: stage widths are 64*scale and 128*scale
    expansions: tuple[int, int, int, int] = (128, 256, 512, 256)  # inner widths of the DepthWise units
    stem_groups: int = 64  # groups of layers.1 when blocks[0] == 1
    fp16: bool = False  # autocast the layers before conv_sep (as insightface)
    autocast_dtype: str = "float16"
    input_size: int = FACE_SIZE  # < 112: the (N,3,112,112) input is resized to this first (cheaper); multiple of 16

    def build(self) -> MobileFaceNet:
        return MobileFaceNet(self)


class ConvBlock(nn.Module):
    """Conv (no bias) -> BatchNorm2d -> PReLU, as ``layers.{0,1,2}``."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1, act: bool = True
    ):
        super().__init__()
        parts: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            parts.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def LinearBlock(cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1) -> ConvBlock:
    """Conv -> BatchNorm2d, no activation (same keys as insightface's LinearBlock)."""
    return ConvBlock(cin, cout, kernel, stride, padding, groups, act=False)


class DepthWise(nn.Module):
    """1x1 expand -> kxk depthwise (carries the stride) -> 1x1 project; optional identity shortcut."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int = 1, residual: bool = False):
        super().__init__()
        assert not residual or (cin == cout and stride == 1), "a residual unit keeps shape"
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, expansion, 1),
            ConvBlock(expansion, expansion, 3, stride=stride, padding=1, groups=expansion),
            LinearBlock(expansion, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, channels: int, num_block: int, expansion: int):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, expansion, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class GDC(nn.Module):
    """Global depthwise conv (7x7 -> 1x1), then a bias-free Linear and BatchNorm1d."""

    def __init__(self, embedding_size: int, channels: int = 512, kernel: int = 7):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),  # (N,512,7,7) -> (N,512,1,1)
            Flatten(),  # (N, 512)
            nn.Linear(channels, embedding_size, bias=False),  # (N, emb)
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """``forward``: (N, 3, 112, 112) in [-1, 1] -> (N, emb), not normalised."""

    def __init__(self, config: MobileFaceNetConfig):
        super().__init__()
        assert 16 <= config.input_size <= FACE_SIZE and config.input_size % 16 == 0, (
            f"input_size must be a multiple of 16 up to {FACE_SIZE}, got {config.input_size}"
        )
        self.config = config
        c1, c2 = 64 * config.scale, 128 * config.scale
        e1, e2, e3, e4 = config.expansions
        b = config.blocks
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, 3, stride=2, padding=1))  # (N, c1, 56, 56)
        if b[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, padding=1, groups=config.stem_groups))
        else:
            self.layers.append(Residual(c1, b[0], e1))
        self.layers.extend(
            [
                DepthWise(c1, c1, e1, stride=2),  # (N, c1, 28, 28)
                Residual(c1, b[1], e1),
                DepthWise(c1, c2, e2, stride=2),  # (N, c2, 14, 14)
                Residual(c2, b[2], e2),
                DepthWise(c2, c2, e3, stride=2),  # (N, c2, 7, 7)
                Residual(c2, b[3], e4),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512, 1)  # (N, 512, 7, 7)
        self.features = GDC(config.embedding_size, kernel=config.input_size // 16)  # (N, emb)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Module]:
        """Modules in input order, for ``--freeze N``: stem, then the three stride-2 stages."""
        L = self.layers
        return [
            nn.ModuleList([L[0], L[1]]),
            nn.ModuleList([L[2], L[3]]),
            nn.ModuleList([L[4], L[5]]),
            nn.ModuleList([L[6], L[7]]),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float16 if self.config.autocast_dtype == "float16" else torch.bfloat16
        if self.config.input_size != x.shape[-1]:
            # (N, 3, 112, 112) -> (N, 3, s, s); bilinear, exportable to ONNX (Resize)
            x = F.interpolate(
                x, size=(self.config.input_size, self.config.input_size), mode="bilinear", align_corners=False
            )
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=self.config.fp16):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float())
        return self.features(x)


@register_backbone("mbf", aliases=("mobilefacenet",))
def mbf(embedding_size: int = 512, **overrides) -> MobileFaceNetConfig:
    """MobileFaceNet as insightface's ``mbf`` (blocks 1,4,6,2; scale 2): about 1M parameters."""
    return MobileFaceNetConfig(embedding_size=embedding_size, **overrides)


@register_backbone("mbf_small", aliases=("mobilefacenet_small",))
def mbf_small(embedding_size: int = 128, **overrides) -> MobileFaceNetConfig:
    """kface's CPU demo network: MobileFaceNet at width 1, fewer units, 64x64 inside (~10x cheaper than mbf)."""
    base = dict(blocks=(1, 2, 3, 1), scale=1, expansions=(64, 128, 256, 128), stem_groups=64, input_size=64)
    base.update(overrides)
    return MobileFaceNetConfig(embedding_size=embedding_size, **base)
