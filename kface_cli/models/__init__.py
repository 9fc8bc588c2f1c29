"""Backbones (iresnet, MobileFaceNet) behind a name registry, and the margin heads that train them.

``from kface_cli.models.registry import get_backbone``; ``from kface_cli.models.heads import build_head``.
(Nothing is imported here, so importing the package does not import torch.)
"""
