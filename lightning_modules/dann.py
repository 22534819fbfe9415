"""DANN: domain-adversarial training of neural networks (Ganin et al., JMLR 2016).

Feature extractor G_f (`backbone`), label predictor G_y (`classifier`) and domain classifier G_d
behind a gradient-reversal layer. One SGD step on Eq. 18 (Algorithm 1):

    E = L_y(G_y(G_f(x_s)), y_s) + L_d(G_d(R_lambda(G_f(x))), d)   over source and target x

R_lambda is the identity forward and -lambda x the gradient backward (Eq. 12-13), so G_d learns to
tell the domains apart while G_f learns to confuse it. Schedules (Sec. 5.2.2), p = progress:
lambda_p = 2 / (1 + exp(-gamma p)) - 1 (here x `trade_off`) and the learning rate
mu_p = mu_0 / (1 + alpha p) ** beta (`scheduler: ProgressLR` in conf/model/dann.yaml).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .components.domain import domain_classifier, grad_reverse
from .components.schedules import adaptation_weight
from .domain_adaptation import DomainAdaptation


class DANN(DomainAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, gamma: float = 10.0,
                 trade_off: float = 1.0, domain_hidden: int = 500, domain_depth: int = 2, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        self.gamma, self.trade_off = gamma, trade_off
        self.domain_classifier = domain_classifier(self.backbone.num_features, domain_hidden, domain_depth)

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        lambd = self.trade_off * adaptation_weight(self.progress, self.gamma)
        f = self.backbone(torch.cat([xs, xt]))
        n = len(xs)
        loss_y = self.source_loss(self.classifier(f[:n]), ys)
        # domain label d = 0 for source, 1 for target; the GRL flips G_d's gradient into G_f
        d = torch.cat([f.new_zeros(n), f.new_ones(len(xt))])
        d_logits = self.domain_classifier(grad_reverse(f, lambd)).squeeze(1)
        loss_d = F.binary_cross_entropy_with_logits(d_logits.float(), d)
        self.log_train({"train/domain_loss": loss_d, "train/domain_acc": ((d_logits > 0).float() == d).float().mean()},
                       len(d))
        self.log_train({"train/lambda": lambd}, 1, on_step=True)
        return self.check_finite(loss_y + loss_d)
