"""Rotation prediction (Gidaris et al. 2018): predict which of 0, 90, 180, 270 degrees an image
was rotated by. All four rotated copies of every image are made on the device and go through the
network in the same batch (Sec. 3.1, "feeding all four rotated copies simultaneously"):

    L = -1/(4N) sum_i sum_{r=0..3} log F_r(g(x_i, r))      (Eq. 1-3)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.augment import all_rotations

from .components.heads import ProjectionMLP
from .ssl_base import SSLMethod


class RotationPrediction(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 head_hidden_dim: int = 0, **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        layers = 2 if head_hidden_dim else 1
        self.rotation_head = ProjectionMLP(self.backbone.num_features, head_hidden_dim or 4, 4, num_layers=layers,
                                           batch_norm=True)

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        rotated, k = all_rotations(x)  # (4N, C, H, W), labels 0..3; copy r * N + i is image i at r * 90 deg
        h = self.backbone(rotated)
        loss = F.cross_entropy(self.rotation_head(h).float(), k)
        return loss, h[: len(x)]  # r = 0: the upright images
