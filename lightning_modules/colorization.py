"""Colorization (Zhang et al. 2016, "Colorful Image Colorization") as a pretext task: grey in, colour out.

The lightness channel goes in (here the luma Y of YUV, given to the encoder as a grey 3-channel image); the
network predicts a distribution over quantised chroma classes at every pixel, trained with the class-rebalanced
cross-entropy of Sec. 2.2:

    L = - sum_{h,w} v(Z_{h,w}) sum_q Z_{h,w,q} log Zhat_{h,w,q}                    (Eq. 2)
    v(Z) = w_{q*},  w proportional to ((1 - lambda) p~ + lambda / Q)^-1,  E_p~[w] = 1     (Eq. 3-4)

with Z the (hard) one-hot chroma class of each pixel and p~ the empirical class distribution of the training
images, counted as they stream by (a running histogram; under DDP the batch counts are summed over processes, so
every process weighs the classes alike). Differences from the paper, for CPU-sized data: YUV instead of CIE Lab
(linear, exactly invertible, so no colour-management code), a `bins` x `bins` grid over (U, V) instead of the
313 in-gamut ab cells, hard instead of soft (5-nearest) encoding, and the decoder starts from the pooled features.
`loss: regression` is the plain L2 on (U, V) that Zhang et al. show gives desaturated colours (Sec. 2.1), kept as
the baseline. Encoder features are always taken of the grey image (also for kNN and the probe).
Needs colour images (data with 3 channels): grey data has no colour to predict.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from datamodules.errors import ConfigError

from .components.conv_decoder import ConvDecoder
from .components.pretext import chroma_classes, rebalancing_weights, rgb_to_yuv
from .ssl_base import SSLMethod

LOSSES = ("classes", "regression")


def grey_input(x: torch.Tensor) -> torch.Tensor:
    """RGB in [-1, 1] -> its luma Y in [-1, 1], repeated over 3 channels (what the encoder sees)."""
    return (rgb_to_yuv(x)[:, :1] * 2 - 1).expand(-1, 3, -1, -1)


class Colorization(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 loss: str = "classes", bins: int = 10, rebalance_mix: float = 0.5, decoder: dict | None = None,
                 **ssl_options):
        if in_chans != 3:
            raise ConfigError(f"model=colorization predicts colour from grey: it needs colour images (3 channels), "
                              f"but the data has {in_chans}; choose a colour dataset (e.g. data=digits_m) or "
                              f"model.input.channels=3 on colour data")
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r}; choices: {list(LOSSES)}")
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        self.loss_kind, self.bins, self.rebalance_mix = loss, bins, rebalance_mix
        out = bins * bins if loss == "classes" else 2
        self.decoder = ConvDecoder(self.backbone.num_features, out, image_size, output="none", **(decoder or {}))
        self.register_buffer("class_counts", torch.zeros(bins * bins))  # p~ of Eq. 4, as counts

    def eval_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(grey_input(x))

    def count_classes(self, target: torch.Tensor) -> None:
        counts = torch.bincount(target.flatten(), minlength=self.bins * self.bins).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # every process keeps the same histogram
        self.class_counts += counts

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        uv = rgb_to_yuv(x.float())[:, 1:]
        h = self.backbone(grey_input(x))
        out = self.decoder(h).float()
        if self.loss_kind == "regression":
            return F.mse_loss(out, uv), h
        target = chroma_classes(uv, self.bins)
        self.count_classes(target)
        weights = rebalancing_weights(self.class_counts, self.rebalance_mix)
        loss = (weights[target] * F.cross_entropy(out, target, reduction="none")).mean()
        return loss, h
