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

from datamodules.multi import TARGET

from .supervised import Supervised


class DomainGeneralization(Supervised):
    """The supervised backbone + linear classifier, its val / test steps (training-domain val, held-out test),
    trained on a batch of every training domain."""

    def training_step(self, batch: dict, batch_idx):
        names = [n for n in batch if n != TARGET]  # the labeled domains (an unlabeled target: multi-source DA)
        xs, ys = zip(*(batch[n] for n in names))
        features = self.backbone(torch.cat(xs)).split([len(x) for x in xs])
        logits = [self.classifier(f) for f in features]
        ce = torch.stack([F.cross_entropy(z.float(), y) for z, y in zip(logits, ys)])
        losses = self.objective(list(features), logits, list(ys), ce, target=batch.get(TARGET))
        self.log_train(losses, sum(len(y) for y in ys))
        return self.check_finite(losses["train/loss"])

    def objective(self, features: list[torch.Tensor], logits: list[torch.Tensor], labels: list[torch.Tensor],
                  ce: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ERM. `ce`: the cross-entropy of each training domain's batch (D,); `target`: unlabeled target
        images (data.unlabeled_target=true), unused by ERM (the mixed-source baseline)."""
        return {"train/loss": ce.mean(), "train/ce": ce.mean()}


ERM = DomainGeneralization
