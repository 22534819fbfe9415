"""Autoencoder and denoising autoencoder (Vincent et al. 2008) as a pretext task: the encoder f maps an image
to its pooled features h, a small decoder g maps h back to the image, and the decoder is discarded after
training (the seed's generation-based step 1):

    AE:   L = || g(f(x)) - x ||^2
    DAE:  L = || g(f(x~)) - x ||^2,   x~ ~ q(x~ | x)      (Vincent et al., Sec. 2.3: reconstruct the clean x)

`noise`: none (AE) | masking (a fraction `noise_level` of the pixels set to 0, the paper's corruption) |
gaussian (N(0, noise_level^2) added). Nothing is mixed across the batch except the encoder's BatchNorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError

from .components.conv_decoder import ConvDecoder
from .components.modes import running_stats_frozen
from .components.pretext import NOISES, corrupt
from .ssl_base import SSLMethod


class Autoencoder(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 decoder: dict | None = None, noise: str = "none", noise_level: float = 0.3, **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        if noise not in NOISES:
            raise ConfigError(f"model.noise={noise!r}; choices: {list(NOISES)}")
        self.noise, self.noise_level = noise, noise_level
        self.decoder = ConvDecoder(self.backbone.num_features, in_chans, image_size, **(decoder or {}))

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        x_tilde = corrupt(x, self.noise, self.noise_level, self.draw_generator(x.device))
        if x_tilde is x:
            h = self.backbone(x)
            return F.mse_loss(self.decoder(h).float(), x.float()), h
        with running_stats_frozen(self.backbone):  # running statistics: of clean images, what is evaluated
            loss = F.mse_loss(self.decoder(self.backbone(x_tilde)).float(), x.float())
        return loss, self.backbone(x)  # the probe learns on clean images' features, which it is scored on
