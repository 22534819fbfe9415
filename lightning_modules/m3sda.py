"""Multi-source domain adaptation by moment matching (Peng et al., "Moment Matching for Multi-Source Domain
Adaptation", ICCV 2019, Eq. 1), the M3SDA alignment term on one shared classifier:

    MD^2 = sum_{k=1,2} ( 1/N sum_i || E[f_i^k] - E[f_T^k] ||_2  +  C(N,2)^-1 sum_{i<j} || E[f_i^k] - E[f_j^k] ||_2 )
    L = 1/N sum_i CE_i + lambda * MD^2

f_i: the features of source i's batch, f_T of the unlabeled target's (data.unlabeled_target=true), f^k the
element-wise k-th power. (The paper's full M3SDA-beta adds one classifier per source and their weighting; this
is the moment-matching part, beside the mixed-source baseline `model=erm data.unlabeled_target=true`.)

lambda = 0.0005 by default, the weight of the authors' digit experiments (VisionLearningGroup.github.io,
M3SDA/code_MSDA_digit/solver_MSDA.py: `loss_msda = 0.0005 * msda.msda_regulizer(...)`). The distance is a sum of
unsquared norms of raw feature moments, so its gradient does not vanish as the features shrink: at lambda = 0.5 a
LeNet's ReLU features collapsed to zero on Rotated MNIST (moment distance 0, cross-entropy stuck at ln 10, 11.7%
test accuracy on every seed; benchmarks/RESULTS.md, issue 23).
"""
from __future__ import annotations

import itertools

import torch

from datamodules.errors import ConfigError

from .domain_generalization import DomainGeneralization


def moment_distance(sources: list[torch.Tensor], target: torch.Tensor, orders: int = 2) -> torch.Tensor:
    """Eq. 1: source-target and source-source distances of the first `orders` moments of the features."""
    total = target.new_zeros(())
    for k in range(1, orders + 1):
        means = [f.float().pow(k).mean(0) for f in sources]
        target_mean = target.float().pow(k).mean(0)
        total = total + torch.stack([(m - target_mean).norm() for m in means]).mean()
        pairs = list(itertools.combinations(means, 2))
        if pairs:
            total = total + torch.stack([(a - b).norm() for a, b in pairs]).mean()
    return total


class M3SDA(DomainGeneralization):
    def __init__(self, *args, trade_off: float = 0.0005, **kwargs):
        super().__init__(*args, **kwargs)
        self.trade_off = float(trade_off)

    def objective(self, features, logits, labels, ce, target=None):
        if target is None:
            raise ConfigError("model=m3sda aligns the sources with an unlabeled target: set data.unlabeled_target=true")
        distance = moment_distance(features, self.backbone(target))
        return {"train/loss": ce.mean() + self.trade_off * distance, "train/ce": ce.mean(), "train/moment_distance": distance}
