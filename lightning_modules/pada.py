"""PADA: partial adversarial domain adaptation (Cao et al., ECCV 2018).

Partial domain adaptation: the target's classes are a subset of the source's (`data.target_classes=[...]`).
DANN then aligns the target with the source classes it lacks as well, and transfers negatively. PADA weighs
each source class by how much the target seems to hold of it,

    gamma = 1/n_t sum_j y^_j,   gamma <- gamma / max(gamma)                      (Eq. 3-4)

with y^_j the classifier's softmax on target example j, and trains DANN's objective with source examples
weighted by gamma_{y_i} in both the label loss and the domain loss (Eq. 5):

    C = 1/n_s sum_i gamma_{y_i} L_y(G_y(G_f(x_i)), y_i)
        - lambda [1/n_s sum_i gamma_{y_i} L_d(G_d(G_f(x_i)), 0) + 1/n_t sum_j L_d(G_d(G_f(x_j)), 1)]

gamma is estimated from the previous epoch's target predictions (all processes'; 1 for every class until
the first estimate), as the authors' code refreshes it every few hundred steps. The weighted means are
normalised by the weights' sum (`components.domain.conditional_domain_loss` for the domain loss).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .components.domain import conditional_domain_loss, grad_reverse
from .components.schedules import adaptation_weight
from .dann import DANN


class PADA(DANN):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, **dann):
        super().__init__(backbone, num_classes, in_chans, optimizer, **dann)
        self.register_buffer("class_weight", torch.ones(num_classes))  # gamma
        self.register_buffer("target_prob_sum", torch.zeros(num_classes))
        self.register_buffer("target_seen", torch.zeros(()))

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        n = len(xs)
        f = self.backbone(torch.cat([xs, xt]))
        logits = self.classifier(f)
        self.source_loss(logits[:n].detach(), ys)  # logs the unweighted source loss and accuracy
        loss_y = F.cross_entropy(logits[:n].float(), ys, weight=self.class_weight)  # Eq. 5, first term
        with torch.no_grad():
            self.target_prob_sum += F.softmax(logits[n:].float(), dim=1).sum(0)
            self.target_seen += len(xt)
        lambd = self.trade_off * adaptation_weight(self.progress, self.gamma)
        d_logits = self.domain_classifier(grad_reverse(f, lambd)).squeeze(1)
        is_target = torch.cat([f.new_zeros(n), f.new_ones(len(xt))])
        weights = torch.cat([self.class_weight[ys], f.new_ones(len(xt))])
        loss_d = conditional_domain_loss(d_logits, is_target, weights)
        self.log_train({"train/domain_loss": loss_d, "train/weighted_source_loss": loss_y}, len(is_target))
        self.log_train({"train/lambda": lambd}, 1, on_step=True)
        return self.check_finite(loss_y + loss_d)

    def on_train_epoch_end(self) -> None:
        """gamma from this epoch's target predictions (Eq. 3-4), for the next epoch."""
        super().on_train_epoch_end()
        totals = torch.cat([self.target_prob_sum, self.target_seen.view(1)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        if totals[-1] > 0:
            gamma = totals[:-1] / totals[-1]
            self.class_weight.copy_(gamma / gamma.max().clamp_min(1e-12))
        self.target_prob_sum.zero_()
        self.target_seen.zero_()
        for c, g in enumerate(self.class_weight.tolist()):
            self.log(f"train/class_weight/{c}", g, sync_dist=False)
