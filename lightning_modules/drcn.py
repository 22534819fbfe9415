"""DRCN: deep reconstruction-classification networks (Ghifary et al., ECCV 2016).

A shared encoder (`backbone`), a label head (`classifier`) and a decoder that reconstructs images
from the encoder's features. The objective (Eq. 3 there)

    min  lambda * L_c(Theta_enc, Theta_lab; source) + (1 - lambda) * L_r(Theta_enc, Theta_dec; target)

is optimised by alternating (Algorithm 1): one step on the labeled source batch with the
classification loss, the next on the unlabeled target batch with the reconstruction (MSE) loss.
lambda = 0.7 by default (`trade_off`).

`denoise: r` corrupts a fraction r of the target pixels with impulse (salt-and-pepper) noise at the
encoder input and reconstructs the clean image, the paper's denoising variant (0 = plain reconstruction).

`schedule: joint` instead takes one step on Eq. 3 itself (both terms, a source and a target batch
per step), so a run of N steps sees N source batches like every other method, not N / 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError

from .domain_adaptation import DomainAdaptation

SCHEDULES = ("alternate", "joint")  # Algorithm 1's alternating steps | one step on Eq. 3


class Decoder(nn.Module):
    """features -> fc -> (64, s/4, s/4) -> two 2x transposed convs -> C x s x s images in [-1, 1]."""

    def __init__(self, num_features: int, out_chans: int, image_size: int, width: int = 64):
        super().__init__()
        self.start = max(1, image_size // 4)
        self.image_size, self.width = image_size, width
        self.fc = nn.Sequential(nn.Linear(num_features, width * self.start**2), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width // 2, out_chans, 4, 2, 1),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.up(self.fc(f).view(len(f), self.width, self.start, self.start))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.tanh(x)


class DRCN(DomainAdaptation):
    caches_trunk_features = False  # the decoder's target is the target image itself
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer,
                 trade_off: float = 0.7, decoder_width: int = 64, schedule: str = "alternate",
                 denoise: float = 0.0, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if not 0.0 < trade_off < 1.0:
            raise ConfigError(f"model.trade_off={trade_off} (DRCN's lambda) must lie in (0, 1)")
        if schedule not in SCHEDULES:
            raise ConfigError(f"model.schedule={schedule!r} is not a choice; choices: {list(SCHEDULES)}")
        if not 0.0 <= denoise < 1.0:
            raise ConfigError(f"model.denoise={denoise} (fraction of target pixels corrupted) must lie in [0, 1)")
        self.trade_off, self.schedule, self.denoise = trade_off, schedule, denoise
        self.decoder = Decoder(self.backbone.num_features, in_chans, image_size, decoder_width)
        self._idle: str | None = None  # the part a step leaves out, by name (a module attribute would be
                                       # registered as a submodule and land in the checkpoint twice)

    def training_step(self, batch, batch_idx):
        if self.schedule == "joint":
            # one step on Eq. 3: lambda L_c(source) + (1 - lambda) L_r(target)
            (xs, ys), xt = batch["source"], batch["target"]
            loss_c = self.source_loss(self.classifier(self.backbone(xs)), ys)
            loss_r = self.reconstruction_loss(xt)
            self._idle = None
            return self.check_finite(self.trade_off * loss_c + (1.0 - self.trade_off) * loss_r)
        if "source" in batch:
            # classification step on source: lambda * L_c
            xs, ys = batch["source"]
            loss = self.trade_off * self.source_loss(self.classifier(self.backbone(xs)), ys)
            self._idle = "decoder"
        else:
            # reconstruction step on target: (1 - lambda) * L_r
            loss = (1.0 - self.trade_off) * self.reconstruction_loss(batch["target"])
            self._idle = "classifier"
        return self.with_all_parameters(self.check_finite(loss))

    def reconstruction_loss(self, xt: torch.Tensor) -> torch.Tensor:
        """L_r: mean squared error between target images and their reconstructions (both in [-1, 1]);
        with `denoise` the encoder sees a corrupted copy and the clean image is the target."""
        loss = F.mse_loss(self.decoder(self.backbone(self.corrupt(xt))).float(), xt.float())
        self.log_train({"train/recon_loss": loss}, len(xt))
        return loss

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Impulse noise: each pixel (all channels together) becomes black (-1) or white (+1) with
        probability `denoise`, either colour equally often."""
        if self.denoise == 0.0:
            return x
        hit = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < self.denoise
        salt = torch.rand(hit.shape, device=x.device) < 0.5
        return torch.where(hit, salt.to(x.dtype) * 2 - 1, x)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Under DDP the idle part got exact-zero gradients; drop them so it is not stepped (as without DDP)."""
        if self._idle is not None:
            for p in getattr(self, self._idle).parameters():
                p.grad = None
