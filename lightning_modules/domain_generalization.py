"""Domain generalization: labeled training domains, a held-out domain never seen (data=multi, rotated_mnist).

What DG methods share, and ERM, their baseline (Vapnik 1998; Gulrajani & Lopez-Paz 2021 show a tuned ERM is
hard to beat): a batch of every training domain each step (DomainBed's minibatches), one backbone and a
linear classifier, `val/acc` on the training domains' validation splits (DomainBed's training-domain
validation, the model selection this runner's `model.optimized_metric` uses), `test/acc` on the held-out
domain. A method overrides `objective`: what it adds to the per-domain cross-entropies.

    ERM: L = 1/D sum_d CE_d
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.multi import TARGET

from .base import BaseMethod, ClassificationMetrics
from .components.backbones import create_backbone


class DomainGeneralization(BaseMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch"):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(logger=False)
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        self.metrics = ClassificationMetrics(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def training_step(self, batch: dict, batch_idx):
        names = [n for n in batch if n != TARGET]  # the labeled domains (an unlabeled target: multi-source DA)
        xs, ys = zip(*(batch[n] for n in names))
        features = self.backbone(torch.cat(xs)).split([len(x) for x in xs])
        logits = [self.classifier(f) for f in features]
        ce = torch.stack([F.cross_entropy(z.float(), y) for z, y in zip(logits, ys)])
        losses = self.objective(list(features), logits, list(ys), ce, target=batch.get(TARGET))
        self.log_train({k: v for k, v in losses.items()}, sum(len(y) for y in ys))
        return self.check_finite(losses["train/loss"])

    def objective(self, features: list[torch.Tensor], logits: list[torch.Tensor], labels: list[torch.Tensor],
                  ce: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ERM. `ce`: the cross-entropy of each training domain's batch (D,); `target`: unlabeled target
        images (data.unlabeled_target=true), unused by ERM (the mixed-source baseline)."""
        return {"train/loss": ce.mean(), "train/ce": ce.mean()}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "val", self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "test", self(x), y)


ERM = DomainGeneralization
