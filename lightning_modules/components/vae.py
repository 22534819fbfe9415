"""Autoencoder and variational autoencoder on vectors (flattened images or an encoder's features).

VAE (Kingma & Welling 2014): encoder q(z|x) = N(mu(x), diag sigma^2(x)), z = mu + sigma * eps with
eps ~ N(0, I) (the reparameterisation trick), decoder p(x|z) Gaussian with unit variance, prior
p(z) = N(0, I). The loss is the negative ELBO,

    -ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z))
          = 1/2 ||x - x'||^2 + const  -  1/2 sum_d (1 + log sigma_d^2 - mu_d^2 - sigma_d^2),

with `beta` weighting the KL term (beta = 1 is the VAE; Higgins et al. 2017 vary it). The feature
handed on (to k-means, a probe) is mu(x), the mean of q(z|x). `kind="ae"` is the plain autoencoder
of the course notes (no sampling, no KL): z = mu(x).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from datamodules.errors import ConfigError

KINDS = ("vae", "ae")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def gaussian_nll(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """-log N(x; recon, I) per example, without the constant D/2 log(2 pi)."""
    return 0.5 * (x - recon).pow(2).flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, closed form (Kingma & Welling 2014, App. B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


class VectorVAE(nn.Module):
    """MLP encoder D -> hidden -> (mu, logvar) of `latent_dim`, MLP decoder back to D."""

    def __init__(self, in_dim: int, latent_dim: int = 10, hidden: list[int] | tuple[int, ...] = (500, 500, 2000),
                 kind: str = "vae"):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"model.vae.kind={kind!r}; choices: {list(KINDS)}")
        if latent_dim < 1:
            raise ConfigError(f"model.vae.latent_dim={latent_dim} must be >= 1")
        self.kind, self.latent_dim = kind, latent_dim
        hidden = list(hidden)
        self.encoder = _mlp([in_dim, *hidden, 2 * latent_dim if kind == "vae" else latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), in_dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x.flatten(1))
        if self.kind == "ae":
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms of a batch (means over the batch) and the latent means."""
        mu, logvar = self.encode(x)
        z = mu if logvar is None else mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decoder(z)
        terms = {"recon": gaussian_nll(x.flatten(1), recon).mean(), "mu": mu}
        terms["kl"] = kl_standard_normal(mu, logvar).mean() if logvar is not None else torch.zeros((), device=x.device)
        return terms

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


def elbo_bound(x: torch.Tensor, vae: VectorVAE, samples: int = 1) -> torch.Tensor:
    """Monte-Carlo ELBO per example, log p(x) >= ELBO, including the Gaussian constant (for tests
    and reports; training uses the forward pass's terms)."""
    mu, logvar = vae.encode(x)
    d = x.flatten(1).shape[1]
    total = torch.zeros(len(x), device=x.device)
    for _ in range(samples):
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        total += -gaussian_nll(x.flatten(1), vae.decoder(z)) - 0.5 * d * math.log(2 * math.pi)
    return total / samples - kl_standard_normal(mu, logvar)
