"""A small convolutional decoder: a feature vector back to an image (or to per-pixel logits).

Shared by the generation-based pretext tasks: the autoencoder and DAE, the VAE, colorization and the
context encoder decode the encoder's pooled features with it, and the DCGAN generator maps noise with it
(Radford et al. 2016: a projection to a small map, then upsampling convolutions with BatchNorm and ReLU).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = ("tanh", "none")


class ConvDecoder(nn.Module):
    """(N, in_dim) -> (N, out_chans, S, S): linear to a (widths[0], s0, s0) map with s0 = ceil(S / 2^k), then k
    blocks of x2 nearest upsampling, 3x3 conv, BatchNorm, ReLU (k = len(widths) - 1), a 3x3 conv to `out_chans`,
    resized to exactly S when S is not a multiple of 2^k. `output`: tanh (images in [-1, 1]) or none (logits)."""

    def __init__(self, in_dim: int, out_chans: int, image_size: int, widths: tuple[int, ...] | list[int] = (128, 64, 32),
                 output: str = "tanh"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"decoder output={output!r}; choices: {list(OUTPUTS)}")
        widths = list(widths)
        self.image_size, self.output = image_size, output
        self.start = -(-image_size // 2 ** (len(widths) - 1))
        self.project = nn.Sequential(nn.Linear(in_dim, widths[0] * self.start ** 2, bias=False),
                                     nn.Unflatten(1, (widths[0], self.start, self.start)),
                                     nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks = []
        for cin, cout in itertools.pairwise(widths):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(widths[-1], out_chans, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.out(self.blocks(self.project(z)))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.tanh(x) if self.output == "tanh" else x
