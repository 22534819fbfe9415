"""OSBP: Open Set domain adaptation by BackPropagation (Saito et al., ECCV 2018).

Open-set DA (`data.known_classes=K`): the target holds the source's K classes and others, unknown to the
source. The classifier has K+1 outputs, the last for "unknown". Source images train the K known outputs
with cross-entropy; for a target image x_t the classifier is trained to put p(y = K+1 | x_t) at the boundary
t (= 0.5), while the feature generator, through a gradient reversal layer, moves it away from t, so each
target feature is pushed to be either clearly known or clearly unknown (Eq. 2-4):

    L_adv(x_t) = -t log p(y=K+1 | x_t) - (1 - t) log (1 - p(y=K+1 | x_t))
    classifier:  min  L_s + L_adv          generator:  min  L_s - L_adv
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError

from .components.domain import grad_reverse
from .domain_adaptation import DomainAdaptation


def boundary_loss(unknown_prob: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """L_adv: binary cross-entropy of p(unknown) against the boundary t, averaged over the batch."""
    p = unknown_prob.clamp(1e-6, 1 - 1e-6)
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()


class OSBP(DomainAdaptation):
    def __init__(self, *args, boundary: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.open_set:
            raise ConfigError("model=osbp is for open-set adaptation: set data.known_classes=K (the first K source "
                              "classes are known; the target's other classes are unknown)")
        self.boundary = float(boundary)
        self.classifier = nn.Linear(self.backbone.num_features, self.num_classes + 1)  # the last: unknown

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        features = self.backbone(torch.cat([xs, xt]))
        loss_s = self.source_loss(self.classifier(features[: len(xs)]), ys)
        unknown = F.softmax(self.classifier(grad_reverse(features[len(xs):])).float(), 1)[:, -1]
        loss_adv = boundary_loss(unknown, self.boundary)
        self.log_train({"train/boundary_loss": loss_adv, "train/target_unknown_prob": unknown.mean()}, len(xt))
        return self.check_finite(loss_s + loss_adv)
