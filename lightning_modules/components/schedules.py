"""Schedules that follow training progress p in [0, 1] (DANN, Ganin et al. 2016, Sec. 5.2.2).

- `adaptation_weight(p)`: lambda_p = 2 / (1 + exp(-gamma p)) - 1, gamma = 10: the domain-loss
  weight grows from 0 to ~1, which suppresses the domain classifier's noise early on.
- `annealed_lr_factor(p)`: mu_p / mu_0 = 1 / (1 + alpha p) ** beta, alpha = 10, beta = 0.75.
- `ProgressLR`: a per-step LambdaLR applying that factor over `total_steps` optimizer steps.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def adaptation_weight(p: float, gamma: float = 10.0) -> float:
    """lambda_p = 2 / (1 + exp(-gamma p)) - 1."""
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def annealed_lr_factor(p: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """mu_p / mu_0 = 1 / (1 + alpha p) ** beta."""
    return 1.0 / (1.0 + alpha * p) ** beta


def progress(step: int, total_steps: int) -> float:
    """p = step / total, clipped to [0, 1]."""
    return min(max(step / max(total_steps, 1), 0.0), 1.0)


class ProgressLR(LambdaLR):
    """mu_p = mu_0 / (1 + alpha p) ** beta with p = step / total_steps (step it every optimizer step)."""

    def __init__(self, optimizer: Optimizer, total_steps: int, alpha: float = 10.0, beta: float = 0.75):
        if total_steps < 1:
            raise ValueError(f"ProgressLR needs total_steps >= 1, got {total_steps}")
        self.total_steps, self.alpha, self.beta = total_steps, alpha, beta
        super().__init__(optimizer, lambda step: annealed_lr_factor(progress(step, total_steps), alpha, beta))


def sigmoid_rampup(p: float, length: float) -> float:
    """Mean Teacher's ramp-up (Tarvainen & Valpola 2017, Sec. 3.2 / appendix, after Laine & Aila 2017):
    exp(-5 (1 - T)^2) with T = p / length clipped to [0, 1]; 1 after the ramp (length 0: 1 from the start)."""
    if length <= 0:
        return 1.0
    t = min(max(p / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
