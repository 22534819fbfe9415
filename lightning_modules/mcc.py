"""MCC: minimum class confusion for versatile domain adaptation (Jin et al., ECCV 2020).

No domain discriminator and no distribution distance: the classifier's confusion between classes on a target
batch is minimised directly (Eq. 7):

    min  L_CE(source) + mu L_MCC(target)

with L_MCC (Eq. 1-6, `components.domain.mcc_loss`): temperature-rescaled probabilities, entropy-based example
weights, the class correlation matrix of the batch, its category normalisation, and the sum of its
off-diagonal (cross-class) entries. `temperature` T = 2.5 and mu = `trade_off` = 1 as in the paper; `ramp:
true` multiplies mu by DANN's lambda_p schedule (off in the paper).

Under DDP the class confusion matrix is taken over the global batch (all processes' target predictions,
gathered with their gradients), the paper's definition for a batch of that size.
"""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError

from .components.domain import mcc_loss
from .components.schedules import adaptation_weight
from .domain_adaptation import DomainAdaptation


class MCC(DomainAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, trade_off: float = 1.0,
                 temperature: float = 2.5, ramp: bool = False, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if temperature <= 0:
            raise ConfigError(f"model.temperature={temperature} must be > 0 (the paper: 2.5)")
        self.trade_off, self.temperature, self.ramp = trade_off, temperature, ramp

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        n = len(xs)
        logits = self.classifier(self.backbone(torch.cat([xs, xt])))
        loss_y = self.source_loss(logits[:n], ys)
        loss_mcc = mcc_loss(logits[n:], self.temperature)  # gathered over processes under DDP
        mu = self.trade_off * (adaptation_weight(self.progress) if self.ramp else 1.0)
        self.log_train({"train/mcc_loss": loss_mcc}, len(xt), on_step=True)
        return self.check_finite(loss_y + mu * loss_mcc)
