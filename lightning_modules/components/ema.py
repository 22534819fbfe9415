"""Exponential moving averages of weights: MoCo's momentum encoder and DDPM's EMA model."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_source, for parameters; buffers are copied.

    Floating buffers (BatchNorm running statistics) are copied rather than averaged, as MoCo's key
    encoder and most EMA implementations do.
    """
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s.detach(), 1.0 - momentum)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


def warmup_momentum(step: int, max_momentum: float, warmup_steps: int) -> float:
    """EMA decay that starts low and rises to `max_momentum`: min(m, (1 + step) / (10 + step)) after warm-up
    style of Ho et al.'s and timm's EMA; with warmup_steps=0 it is `max_momentum` from the start."""
    if warmup_steps <= 0:
        return max_momentum
    return min(max_momentum, (1.0 + step) / (10.0 + step)) if step < warmup_steps else max_momentum


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off, to be updated only by `ema_update`."""
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
