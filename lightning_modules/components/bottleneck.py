"""A feature extractor G_f made of a backbone (`trunk`) and a new bottleneck layer, as in the
domain-adaptation recipes of Transfer-Learning-Library (`ImageClassifier(backbone, bottleneck_dim=256)`:
fc -> BatchNorm -> ReLU between the pretrained backbone and the classifier).

With the trunk frozen, the bottleneck is what adaptation trains: the methods' losses (gradient reversal,
MMD, an ADDA target encoder) reach it as they would reach a backbone. A frozen trunk in eval mode gives
every image the same features in every epoch, so they can be computed once: a 2-D input (N, D) is taken to
be the trunk's output and goes to the bottleneck directly, images (N, C, H, W) go through the trunk.
"""
from __future__ import annotations

import torch
from torch import nn


class BottleneckEncoder(nn.Module):
    def __init__(self, trunk: nn.Module, dim: int):
        super().__init__()
        self.trunk = trunk
        self.bottleneck = nn.Sequential(nn.Linear(trunk.num_features, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.num_features = dim
        self.backbone_spec = getattr(trunk, "backbone_spec", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(x if x.ndim == 2 else self.trunk(x))

    @property
    def trunk_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.trunk.parameters())


def pretrained_part(encoder: nn.Module) -> nn.Module:
    """The part of an encoder that may start from pretrained weights (the bottleneck is always new)."""
    return encoder.trunk if isinstance(encoder, BottleneckEncoder) else encoder
