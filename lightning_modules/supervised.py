"""Supervised baseline: a backbone and a linear classifier trained from scratch with cross-entropy."""
from __future__ import annotations

import torch
from torch import nn

from .base import BaseMethod, ClassificationMetrics
from .components.backbones import create_backbone


class Supervised(BaseMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch"):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(logger=False)
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        self.metrics = ClassificationMetrics(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.check_finite(self.metrics.log_step(self, "train", self(x), y))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "val", self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "test", self(x), y)
