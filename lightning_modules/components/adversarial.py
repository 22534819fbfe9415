"""GAN losses (Goodfellow et al. 2014) as pure functions of the discriminator's logits, and a call of a
network whose parameters receive no gradient (for a generator's adversarial term trained in the same step).

    L_D = -E[log D(x)] - E[log(1 - D(G(z)))]      (Eq. 1, the discriminator's side)
    L_G = -E[log D(G(z))]                          (the non-saturating generator loss, Sec. 3)

with D(.) = sigmoid(logit), written with BCE-with-logits for numerical stability.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def call_frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with its parameters detached: the gradient reaches x (the generator) but not the module (the
    discriminator), so a generator term and a discriminator term can share one backward pass."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, (x,))
