"""Target-oracle baseline: the same network trained on the *labeled* target training images; the
upper bound of adaptation. It is the only method whose training batches carry target labels
(its config sets `datamodule.train_target_labels: true`)."""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError

from .domain_adaptation import DomainAdaptation


class TargetOracle(DomainAdaptation):
    def training_step(self, batch, batch_idx):
        target = batch["target"]
        if torch.is_tensor(target):
            raise ConfigError("target_oracle needs target labels in training batches: keep "
                              "data.train_target_labels=true")
        xt, yt = target
        return self.check_finite(self.source_loss(self.classifier(self.backbone(xt)), yt))
