"""The DDPM U-Net's down path as an encoder (the seed's generation-based step 3: a diffusion model learns image
structure while it learns to denoise, and its encoder is fine-tuned for a downstream task with few labels).

Training is DDPM's (Ho et al. 2020, Algorithm 1): x_0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I), a gradient step on

    L_simple = || eps - eps_theta( sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t ) ||^2        (Eq. 14)

with the U-Net of `components.unet`. The encoder (`model.backbone`, the registered timm model `unet_encoder`) *is*
that U-Net's time embedding, input convolution, down path and middle block (the same modules), so kNN, the online
probe and `encoder.pt` see the diffusion model's own weights: `model.backbone.name=unet_encoder
model.backbone.checkpoint=RUN/encoder.pt` hands them to a downstream run. Its features are the global average of
the middle block's output on the clean image at `backbone.feature_t`. GroupNorm only: nothing is mixed across the
batch, and every process draws its own t and eps (`draw_generator`).
"""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError

from .components.diffusion import GaussianDiffusion
from .components.unet import UNet
from .ssl_base import SSLMethod

SHARED = ("temb", "conv_in", "down", "mid")  # the U-Net parts that are the encoder
UNET_OPTIONS = ("base_channels", "channel_mults", "num_res_blocks", "attn_levels", "dropout", "norm_groups")


class DDPMEncoder(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 diffusion: dict | None = None, **ssl_options):
        if backbone.get("name") != "unet_encoder":
            raise ConfigError(f"model=ddpm_encoder trains a U-Net: model.backbone.name must be unet_encoder "
                              f"(got {backbone.get('name')!r})")
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        unet_options = {k: tuple(v) if isinstance(v, list) else v for k, v in backbone.items() if k in UNET_OPTIONS}
        self.unet = UNet(in_chans=in_chans, image_size=image_size, **unet_options)  # checks the image size
        for name in SHARED:  # the encoder's modules become the U-Net's: one set of weights
            setattr(self.unet, name, getattr(self.backbone.unet, name))
        self.diffusion = GaussianDiffusion(**(diffusion or {}))

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        loss = self.diffusion.training_loss(self.unet, x, generator=self.draw_generator(x.device))
        with torch.no_grad():
            features = self.backbone(x)
        return loss, features
