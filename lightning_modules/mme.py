"""MME: Minimax Entropy (Saito et al., "Semi-supervised Domain Adaptation via Minimax Entropy", ICCV 2019).

Semi-supervised DA: labeled source, k labeled target images per class (`data.target_labels_per_class`),
unlabeled target. The classifier is a cosine-similarity classifier whose weight vectors act as class
prototypes, logits = W^T f / (||W|| ||f|| T) (Sec. 3.2, T = 0.05). Training (Eq. 5-6):

    classifier:          min  L_CE(labeled)  -  lambda H(unlabeled target)     (prototypes move to the target)
    feature extractor:   min  L_CE(labeled)  +  lambda H(unlabeled target)     (target features cluster)

both in one backward pass: the entropy term reaches the features through a gradient reversal layer, as in
the paper's code, so the classifier ascends the entropy while the features descend it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .components.domain import entropy, grad_reverse
from .domain_adaptation import DomainAdaptation


class CosineClassifier(nn.Module):
    """logits = normalised weights . normalised features / temperature (no bias)."""

    def __init__(self, in_features: int, num_classes: int, temperature: float = 0.05):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)
        self.temperature = temperature

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T / self.temperature


class MME(DomainAdaptation):
    uses_labeled_target = True

    def __init__(self, *args, trade_off: float = 0.1, temperature: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.trade_off = float(trade_off)  # lambda
        self.classifier = CosineClassifier(self.backbone.num_features, self.num_classes, temperature)

    def training_step(self, batch, batch_idx):
        xs, ys = self.labeled_examples(batch)
        xt = batch["target"]
        features = self.backbone(torch.cat([xs, xt]))
        ce = self.source_loss(self.classifier(features[: len(xs)]), ys)
        target_probs = self.classifier(grad_reverse(features[len(xs):])).float().softmax(1)
        h = entropy(target_probs).mean()
        self.log_train({"train/target_entropy": h}, len(xt))
        return self.check_finite(ce - self.trade_off * h)
