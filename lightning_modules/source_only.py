"""Source-only baseline: the same network trained on labeled source images alone, tested on the
target. The lower bound every adaptation method must beat (target batches are drawn but unused)."""
from __future__ import annotations

from .domain_adaptation import DomainAdaptation


class SourceOnly(DomainAdaptation):
    def training_step(self, batch, batch_idx):
        xs, ys = batch["source"]
        return self.check_finite(self.source_loss(self.classifier(self.backbone(xs)), ys))
