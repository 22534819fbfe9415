"""Source-only baseline: the same network trained on labeled source images alone, tested on the
target. The lower bound every adaptation method must beat (target batches are drawn but unused).
With `data.target_labels_per_class=k` it is the "S+T" baseline of semi-supervised DA: the k labeled target
images per class join the source batch (Saito et al. 2019)."""
from __future__ import annotations

from .domain_adaptation import DomainAdaptation


class SourceOnly(DomainAdaptation):
    uses_labeled_target = True

    def training_step(self, batch, batch_idx):
        xs, ys = self.labeled_examples(batch)
        return self.check_finite(self.source_loss(self.classifier(self.backbone(xs)), ys))
