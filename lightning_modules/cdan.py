"""CDAN and CDAN+E: conditional adversarial domain adaptation (Long et al., NeurIPS 2018).

DANN's minimax game, but the domain discriminator D sees the features f conditioned on the classifier's
predictions g = softmax(G(f)) through a multilinear map T (Eq. 6):

    min_G  E(G) - lambda E(D, G),   min_D  E(D, G),
    E(D, G) = -E_s log D(T(h_s)) - E_t log(1 - D(T(h_t)))

T(h) = f (x) g, the outer product (Eq. 4), when d_f x C <= 4096 (`multilinear: auto`), else the randomized
multilinear map (R_f f) odot (R_g g) / sqrt(d) with d = `random_dim` (Eq. 5). g enters T without gradient
(the authors' code). CDAN+E (`entropy_conditioning: true`, conf/model/cdan_e.yaml) weighs every example of the
domain loss by w(H(g)) = 1 + e^{-H(g)} (Eq. 8-9), so that the discriminator attends to examples whose
predictions are certain. The minimax runs in one step through a gradient-reversal layer on T(h), with DANN's
lambda_p schedule (x `trade_off`); the discriminator is the paper's fc 1024 -> 1024 -> 1 MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError

from .components.domain import (RandomizedMultilinearMap, conditional_domain_loss, domain_classifier,
                                entropy_weight, grad_reverse, multilinear_map)
from .components.schedules import adaptation_weight
from .domain_adaptation import DomainAdaptation

MULTILINEAR = ("auto", "full", "randomized")
FULL_MAP_LIMIT = 4096  # the paper switches to the randomized map above this d_f x C


class CDAN(DomainAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, trade_off: float = 1.0,
                 gamma: float = 10.0, entropy_conditioning: bool = False, multilinear: str = "auto",
                 random_dim: int = 1024, domain_hidden: int = 1024, domain_depth: int = 2, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if multilinear not in MULTILINEAR:
            raise ConfigError(f"model.multilinear={multilinear!r} is not a choice; choices: {list(MULTILINEAR)}")
        if random_dim < 1:
            raise ConfigError(f"model.random_dim={random_dim} must be a positive width (the paper: 1024)")
        self.trade_off, self.gamma, self.entropy_conditioning = trade_off, gamma, entropy_conditioning
        outer = self.backbone.num_features * num_classes
        randomized = multilinear == "randomized" or (multilinear == "auto" and outer > FULL_MAP_LIMIT)
        self.random_map = RandomizedMultilinearMap(self.backbone.num_features, num_classes, random_dim) if randomized else None
        self.domain_classifier = domain_classifier(random_dim if randomized else outer, domain_hidden, domain_depth)

    def conditioning(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """T(h) = T(f, g): the multilinear map (Eq. 4) or its randomized approximation (Eq. 5)."""
        return multilinear_map(f, g) if self.random_map is None else self.random_map(f, g)

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        n = len(xs)
        f = self.backbone(torch.cat([xs, xt]))
        logits = self.classifier(f)
        loss_y = self.source_loss(logits[:n], ys)
        g = F.softmax(logits.float(), dim=1).detach()
        lambd = self.trade_off * adaptation_weight(self.progress, self.gamma)
        d_logits = self.domain_classifier(grad_reverse(self.conditioning(f.float(), g), lambd)).squeeze(1)
        is_target = torch.cat([f.new_zeros(n), f.new_ones(len(xt))])
        weights = entropy_weight(g) if self.entropy_conditioning else None  # CDAN+E, Eq. 8
        loss_d = conditional_domain_loss(d_logits, is_target, weights)
        self.log_train({"train/domain_loss": loss_d,
                        "train/domain_acc": ((d_logits > 0).float() == is_target).float().mean()}, len(is_target))
        self.log_train({"train/lambda": lambd}, 1, on_step=True)
        return self.check_finite(loss_y + loss_d)
