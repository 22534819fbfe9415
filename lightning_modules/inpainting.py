"""Context encoder (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting").

A region of the image is dropped (mask M = 1 there), the encoder F sees the rest, and the decoder fills the
image in; the loss is the reconstruction of the dropped region, plus an optional adversarial term:

    L_rec = || M * (x - F((1 - M) * x)) ||^2                 (Eq. 1; averaged over the masked pixels)
    L_adv = max_D  E[log D(x)] + E[log(1 - D(F((1 - M) * x)))]    (Eq. 2)
    L     = lambda_rec L_rec + lambda_adv L_adv                (Eq. 3; the paper: 0.999 / 0.001)

`adversarial_weight: 0` (default) is the L2-only context encoder, the variant the paper uses for feature learning
(Sec. 5.2); with a weight > 0 a small discriminator (`adversarial_backbone`) judges the completed images, and its
own term and the encoder-decoder's term share one backward (`components.adversarial.call_frozen` keeps the
generator's term out of the discriminator's gradient). `mask`: centre (the central square of side
`mask_fraction` x S, the paper's central region) | random (a square of that side anywhere, the random-block
mask). The dropped pixels are set to 0, the middle of [-1, 1]. kNN and the probe use the features of whole
images. Nothing is mixed across the batch except BatchNorm.
"""
from __future__ import annotations

import torch
from torch import nn

from datamodules.errors import ConfigError

from .components.adversarial import call_frozen, discriminator_loss, generator_loss
from .components.backbones import create_backbone
from .components.conv_decoder import ConvDecoder
from .components.modes import running_stats_frozen
from .components.pretext import centre_mask, random_square_mask
from .ssl_base import SSLMethod

MASKS = ("centre", "random")


class ContextEncoder(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 mask: str = "centre", mask_fraction: float = 0.5, adversarial_weight: float = 0.0,
                 adversarial_backbone: dict | None = None, decoder: dict | None = None, **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        if mask not in MASKS:
            raise ConfigError(f"model.mask={mask!r}; choices: {list(MASKS)}")
        if not 0 < mask_fraction < 1:
            raise ConfigError(f"model.mask_fraction={mask_fraction}: the side of the dropped square as a fraction of "
                              f"the image, in (0, 1)")
        self.mask_kind, self.mask_fraction, self.image_size = mask, mask_fraction, image_size
        self.adversarial_weight = adversarial_weight
        self.decoder = ConvDecoder(self.backbone.num_features, in_chans, image_size, **(decoder or {}))
        self.discriminator = None
        if adversarial_weight > 0:
            trunk = create_backbone(in_chans=in_chans, **(adversarial_backbone or {"name": "small_cnn"}))
            self.discriminator = nn.Sequential(trunk, nn.Linear(trunk.num_features, 1))

    def draw_mask(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask_kind == "centre":
            return centre_mask(len(x), x.shape[-1], self.mask_fraction, device=x.device)
        return random_square_mask(len(x), x.shape[-1], self.mask_fraction, self.draw_generator(x.device), x.device)

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        m = self.draw_mask(x).to(x.dtype)
        with running_stats_frozen(self.backbone):  # running statistics: of whole images, what is evaluated
            filled = self.decoder(self.backbone((1 - m) * x)).float()
        loss = ((filled - x.float()) * m).pow(2).sum() / (m.sum() * x.shape[1]).clamp_min(1)  # L_rec
        if self.discriminator is not None:
            completed = m * filled + (1 - m) * x.float()  # the context with the region filled in
            d_loss = discriminator_loss(self.discriminator(x).float(), self.discriminator(completed.detach()).float())
            g_loss = generator_loss(call_frozen(self.discriminator, completed).float())
            loss = (1 - self.adversarial_weight) * loss + self.adversarial_weight * g_loss + d_loss
            self.log_train({"train/d_loss": d_loss, "train/adv_loss": g_loss}, batch_size=len(x))
        return loss, self.backbone(x)
