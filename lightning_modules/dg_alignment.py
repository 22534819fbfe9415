"""Feature alignment across training domains, DomainBed's CORAL and MMD (Gulrajani & Lopez-Paz 2021,
after Sun & Saenko 2016 and Li et al. 2018, "Domain Generalization with Adversarial Feature Learning"):

    L = 1/D sum_d CE_d + gamma * 1/P sum_{i<j} penalty(f_i, f_j)       over the P pairs of training domains

CORAL's penalty: the squared distance of the feature means plus that of the covariances (mean squared entry,
as DomainBed); MMD's: the multi-kernel Gaussian MMD^2 (components/domain.py, DAN's kernels). Under DDP each
process aligns its own batches of the domains (the penalty is a mean over pairs, and DDP averages it).
"""
from __future__ import annotations

import itertools

import torch

from .components.domain import covariance, mk_mmd2
from .domain_generalization import DomainGeneralization


def coral_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.flatten(1).float(), y.flatten(1).float()
    return (x.mean(0) - y.mean(0)).pow(2).mean() + (covariance(x) - covariance(y)).pow(2).mean()


def mmd_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return mk_mmd2(x.float(), y.float())


class FeatureAlignment(DomainGeneralization):
    penalty = staticmethod(coral_penalty)

    def __init__(self, *args, gamma: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = float(gamma)

    def objective(self, features, logits, labels, ce, target=None):
        pairs = list(itertools.combinations(features, 2))
        penalty = torch.stack([self.penalty(a, b) for a, b in pairs]).mean() if pairs else ce.new_zeros(())
        return {"train/loss": ce.mean() + self.gamma * penalty, "train/ce": ce.mean(), "train/penalty": penalty}


class CORAL(FeatureAlignment):
    penalty = staticmethod(coral_penalty)


class MMD(FeatureAlignment):
    penalty = staticmethod(mmd_penalty)
