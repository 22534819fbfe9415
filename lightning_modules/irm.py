"""IRM (Arjovsky et al. 2019, IRMv1, Eq. 4): features on which one classifier is optimal for every domain.

    L = 1/D sum_d CE_d + lambda(t) * 1/D sum_d || grad_{w | w=1.0} CE_d(w * logits) ||^2

The squared gradient is estimated without bias from two halves of each domain's batch (the product of the
halves' gradients, as in the paper's code). lambda(t) = 1 for the first `anneal_fraction` of the run, then
`penalty_weight` (DomainBed: 100 after 500 steps; here a fraction of the run). DomainBed also resets Adam's
state when the weight jumps; this does not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .domain_generalization import DomainGeneralization


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    scale = torch.ones((), device=logits.device, requires_grad=True)
    first = F.cross_entropy(logits[::2].float() * scale, y[::2])
    second = F.cross_entropy(logits[1::2].float() * scale, y[1::2])
    (g1,) = torch.autograd.grad(first, [scale], create_graph=True)
    (g2,) = torch.autograd.grad(second, [scale], create_graph=True)
    return g1 * g2


class IRM(DomainGeneralization):
    def __init__(self, *args, penalty_weight: float = 100.0, anneal_fraction: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty_weight, self.anneal_fraction = float(penalty_weight), float(anneal_fraction)

    def objective(self, features, logits, labels, ce, target=None):
        penalty = torch.stack([irm_penalty(z, y) for z, y in zip(logits, labels)]).mean()
        weight = self.penalty_weight if self.progress >= self.anneal_fraction else 1.0
        loss = ce.mean() + weight * penalty
        if weight > 1.0:
            loss = loss / weight  # keeps the gradient scale, as the paper's code does
        return {"train/loss": loss, "train/ce": ce.mean(), "train/penalty": penalty}
