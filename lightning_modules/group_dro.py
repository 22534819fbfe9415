"""GroupDRO (Sagawa et al., ICLR 2020, Algorithm 1): minimise the worst training domain's loss, softly.

    q_d <- q_d exp(eta * CE_d),  q <- q / sum q          (every step, no gradient)
    L = sum_d q_d CE_d

q starts uniform and drifts towards the domains that stay hard. Under DDP the domain losses that update q are
averaged over processes first, so every process keeps the same q.
"""
from __future__ import annotations

import torch

from .components.distributed import gather_rows
from .domain_generalization import DomainGeneralization


class GroupDRO(DomainGeneralization):
    def __init__(self, *args, num_domains: int = 2, eta: float = 0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.eta = float(eta)
        self.register_buffer("q", torch.full((num_domains,), 1.0 / num_domains))  # saved: a resume continues q

    def objective(self, features, logits, labels, ce, target=None):
        with torch.no_grad():
            mean_ce = gather_rows(ce.detach().float()[None]).mean(0)  # the same on every process
            q = self.q * torch.exp(self.eta * mean_ce)
            self.q = q / q.sum()
        loss = (self.q * ce).sum()
        return {"train/loss": loss, "train/ce": ce.mean(), "train/q_max": self.q.max()}
