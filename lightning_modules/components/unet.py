"""The epsilon-prediction U-Net of DDPM (Ho et al. 2020, Appendix B; a PixelCNN++-style backbone).

Residual blocks with GroupNorm and the time embedding added between the two convolutions, self-attention
at the levels listed in `attn_levels` (0 = full resolution; Ho et al. use it at 16x16) and in the middle, dropout inside the residual blocks, and one downsampling
(stride-2 conv) between levels; `channel_mults` sets the width and number of levels, `num_res_blocks`
the depth per level. Any square image whose side is divisible by 2^(levels-1), 1 or 3 channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5), (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2, self.dropout = _norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))  # the block starts as the identity
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t) for images (N, in_chans, S, S) and integer timesteps t (N,)."""

    def __init__(self, in_chans: int = 1, image_size: int = 28, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_levels: tuple[int, ...] = (2,), dropout: float = 0.1, norm_groups: int = 32):
        super().__init__()
        levels = len(channel_mults)
        factor = 2 ** (levels - 1)
        if in_chans not in (1, 3):
            raise ConfigError(f"U-Net in_chans={in_chans}; choices: 1 (grey), 3 (colour)")
        if image_size % factor:
            raise ConfigError(
                f"image_size={image_size} is not divisible by the U-Net's downsampling factor {factor} "
                f"(2^(len(model.unet.channel_mults)-1), channel_mults={list(channel_mults)}); set model.input.image_size "
                f"to a multiple of {factor} or use fewer levels"
            )
        if not set(attn_levels) <= set(range(levels)):
            raise ConfigError(f"model.unet.attn_levels={list(attn_levels)}: this U-Net has levels {list(range(levels))} "
                              f"(one per entry of channel_mults)")
        self.in_chans, self.image_size = in_chans, image_size
        temb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.temb = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_chans, base_channels, 3, padding=1)

        def block(cin, cout, level):
            attn = AttnBlock(cout, norm_groups) if level in attn_levels else nn.Identity()
            return nn.ModuleList([ResBlock(cin, cout, temb_dim, dropout, norm_groups), attn])

        # Down path: remember every output for the skip connections.
        self.down, skips, ch = nn.ModuleList(), [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, level))
                ch = base_channels * mult
                skips.append(ch)
            if level < levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, temb_dim, dropout, norm_groups), AttnBlock(ch, norm_groups),
                                  ResBlock(ch, ch, temb_dim, dropout, norm_groups)])
        # Up path: num_res_blocks + 1 blocks per level, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base_channels * mult, level))
                ch = base_channels * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(_norm(ch, norm_groups), nn.SiLU(), _zero(nn.Conv2d(ch, in_chans, 3, padding=1)))

    def encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The down path and the middle block: (middle output, skip activations, time embedding)."""
        temb = self.temb(timestep_embedding(t, self.base_channels).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer[1](layer[0](h, temb)) if isinstance(layer, nn.ModuleList) else layer(h)
            hs.append(h)
        return self.mid[2](self.mid[1](self.mid[0](h, temb)), temb), hs, temb

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, hs, temb = self.encode(x, t)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], dim=1), temb))
            else:
                h = layer(h)
        return self.out(h)
