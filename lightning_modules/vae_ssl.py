"""Variational autoencoder (Kingma & Welling 2014) as a pretext task: the encoder's mean is the feature.

    q(z|x) = N(mu(h), diag sigma^2(h)),  h = f(x) (the pooled encoder features), z = mu + sigma * eps
    -ELBO  = 1/2 ||x - g(z)||^2 + beta * KL(q(z|x) || N(0, I))       (Eq. 3 and Appendix B; beta-VAE for beta != 1)

The loss terms are `components.vae`'s (`gaussian_nll`, `kl_standard_normal`); the decoder g is the shared
`ConvDecoder`. kNN and the linear probe score mu(f(x)); `encoder.pt` holds f (mu is a linear map of its
features). Nothing is mixed across the batch except the encoder's BatchNorm.
"""
from __future__ import annotations

import torch
from torch import nn

from datamodules.errors import ConfigError

from .components.conv_decoder import ConvDecoder
from .components.pretext import normal_like
from .components.vae import gaussian_nll, kl_standard_normal
from .ssl_base import SSLMethod


class VAEPretext(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 latent_dim: int = 64, beta: float = 1.0, decoder: dict | None = None, **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        if latent_dim < 1:
            raise ConfigError(f"model.latent_dim={latent_dim} must be >= 1")
        self.beta = beta
        self.posterior = nn.Linear(self.backbone.num_features, 2 * latent_dim)  # h -> (mu, log sigma^2)
        self.decoder = ConvDecoder(latent_dim, in_chans, image_size, **(decoder or {}))
        # the probe scores mu, not h
        self.online = type(self.online)(latent_dim, num_classes, **(ssl_options.get("evaluation") or {}))

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(self.backbone(x)).float().chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def eval_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior_params(x)[0]

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        mu, logvar = self.posterior_params(x)
        z = mu + normal_like(mu, self.draw_generator(mu.device)) * (0.5 * logvar).exp()  # the reparameterisation trick
        recon = self.decoder(z).float()
        nll, kl = gaussian_nll(x.float(), recon).mean(), kl_standard_normal(mu, logvar).mean()
        self.log_train({"train/nll": nll, "train/kl": kl}, batch_size=len(x))
        return nll + self.beta * kl, mu
