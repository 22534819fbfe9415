"""Pretext targets made from the images themselves (pure functions, unit-tested in tests/test_pretext.py).

- `jigsaw_permutations`: the fixed permutation set of Noroozi & Favaro (2016, Sec. 3.2, Algorithm 1),
  chosen greedily for large Hamming distance.
- `cut_tiles`: the 3x3 grid of tiles with gaps and random jitter that both jigsaw (Noroozi & Favaro) and
  relative patch position (Doersch et al. 2015, Sec. 3) cut an image into.
- `NEIGHBOURS`: the 8 tile positions around the centre (Doersch et al., Fig. 2).
- `centre_mask` / `random_square_mask`: the region a context encoder fills in (Pathak et al. 2016, Sec. 3.3).
- `rgb_to_yuv` / `yuv_to_rgb`, `chroma_bins`, `chroma_classes`, `rebalancing_weights`: colour targets of
  colorization (Zhang et al. 2016, Sec. 2.1-2.2), in the linear YUV space instead of CIE Lab.
- `corrupt`: the input noise of a denoising autoencoder (Vincent et al. 2008): masking or Gaussian.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from datamodules.errors import ConfigError

# ---- jigsaw: permutation set ------------------------------------------------------------------------------


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance between every row of a (M, T) and every row of b (K, T): (M, K) counts of positions
    that differ."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


@functools.lru_cache(maxsize=2)
def _all_permutations(tiles: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.uint8)


def jigsaw_permutations(num: int, tiles: int = 9, seed: int = 0) -> torch.Tensor:
    """`num` permutations of `tiles` positions, picked greedily for large Hamming distance (Noroozi & Favaro
    2016, Algorithm 1, in its max-min form): start from a random permutation, then repeatedly add the one whose
    *smallest* distance to those chosen is largest (ties broken by a seeded random order). Deterministic given
    `seed`; row 0 is not special (the identity is as likely as any other)."""
    every = _all_permutations(tiles)
    if not 1 <= num <= len(every):
        raise ConfigError(f"model.num_permutations={num}: choose 1..{len(every)} (permutations of {tiles} tiles)")
    every = every[np.random.default_rng(seed).permutation(len(every))]  # the seeded tie-break
    chosen = [0]
    nearest = (every != every[0]).sum(1, dtype=np.uint8)  # distance of every candidate to the closest chosen one
    for _ in range(num - 1):
        j = int(nearest.argmax())
        chosen.append(j)
        np.minimum(nearest, (every != every[j]).sum(1, dtype=np.uint8), out=nearest)
    return torch.from_numpy(every[chosen].astype(np.int64))


# ---- tiles for jigsaw and relative position ---------------------------------------------------------------

# (row, column) offsets of the 8 neighbours of the centre tile, in the order of Doersch et al.'s Fig. 2:
# top-left, top, top-right, left, right, bottom-left, bottom, bottom-right. Tile index in the 3x3 grid = 3r + c.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
CENTRE = 4


def tile_size(image_size: int, grid: int = 3, gap: float = 0.2) -> int:
    """The side of one tile: the cell (image_size // grid) less the gap (a fraction of the cell)."""
    cell = image_size // grid
    return cell - round(gap * cell)


def check_tile_size(image_size: int | None, grid: int, gap: float, min_tile: int, method: str) -> None:
    """Fail before training when the images are too small for `grid` x `grid` tiles of at least `min_tile` px."""
    if not 0 <= gap < 1:
        raise ConfigError(f"model.gap={gap}: a fraction of the cell in [0, 1)")
    if image_size is None:
        return
    smallest = next(s for s in itertools.count(grid) if tile_size(s, grid, gap) >= min_tile)
    if image_size < smallest:
        raise ConfigError(
            f"model={method} cuts {grid}x{grid} tiles of at least {min_tile} px (gap {gap} of each cell): images of "
            f"{image_size} px are too small, the minimum size is {smallest} px; set data.image_size={smallest} or more "
            f"(or lower model.min_tile / model.gap)")


def cut_tiles(x: torch.Tensor, grid: int = 3, gap: float = 0.2, jitter: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, grid*grid, C, t, t): the grid's tiles in row-major order. Each tile is t = cell - gap
    pixels, placed at a random offset inside its cell (uniform over the gap, per image and tile) when `jitter`,
    else centred: the gap and jitter keep the network from matching edges and lines across tiles (the trivial
    shortcuts of Doersch et al., Sec. 3, and Noroozi & Favaro, Sec. 3.3)."""
    n, _, h, w = x.shape
    cell = min(h, w) // grid
    t = tile_size(min(h, w), grid, gap)
    slack = cell - t
    k = grid * grid
    if jitter and slack > 0:
        dy = torch.randint(0, slack + 1, (n, k), generator=generator, device=generator.device if generator else None)
        dx = torch.randint(0, slack + 1, (n, k), generator=generator, device=generator.device if generator else None)
        dy, dx = dy.to(x.device), dx.to(x.device)
    else:
        dy = dx = torch.full((n, k), slack // 2, device=x.device)
    cells = torch.arange(k, device=x.device)
    top = (cells // grid) * cell + dy          # (N, k) top-left corner of every tile
    left = (cells % grid) * cell + dx
    r = torch.arange(t, device=x.device)
    rows = (top[..., None] + r)[..., :, None]  # (N, k, t, 1)
    cols = (left[..., None] + r)[..., None, :]  # (N, k, 1, t)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # (N, k, C, t, t)


# ---- inpainting masks ----------------------------------------------------------------------------------------


def centre_mask(n: int, size: int, fraction: float = 0.5, device=None) -> torch.Tensor:
    """(N, 1, S, S) with 1 on the central square of side `fraction` x S (Pathak et al.: the centre quarter of the
    area, side S/2) and 0 elsewhere."""
    side = max(1, round(fraction * size))
    start = (size - side) // 2
    mask = torch.zeros(n, 1, size, size, device=device)
    mask[..., start : start + side, start : start + side] = 1.0
    return mask


def random_square_mask(n: int, size: int, fraction: float = 0.5, generator: torch.Generator | None = None,
                       device=None) -> torch.Tensor:
    """A square of side `fraction` x S at a uniformly random place per image (Pathak et al.'s random-block mask)."""
    side = max(1, round(fraction * size))
    gdev = generator.device if generator is not None else None
    top = torch.randint(0, size - side + 1, (n,), generator=generator, device=gdev).to(device)
    left = torch.randint(0, size - side + 1, (n,), generator=generator, device=gdev).to(device)
    r = torch.arange(size, device=device)
    inside_r = (r[None] >= top[:, None]) & (r[None] < top[:, None] + side)
    inside_c = (r[None] >= left[:, None]) & (r[None] < left[:, None] + side)
    return (inside_r[:, :, None] & inside_c[:, None, :]).float()[:, None]


# ---- colour targets ------------------------------------------------------------------------------------------

# BT.601 YUV from RGB in [0, 1]: Y = 0.299 R + 0.587 G + 0.114 B, U = 0.492 (B - Y), V = 0.877 (R - Y), so
# Y in [0, 1], U in [-0.436, 0.436], V in [-0.615, 0.615], and U = V = 0 exactly for grey.
_Y = torch.tensor([0.299, 0.587, 0.114])
_RGB_TO_YUV = torch.stack([_Y, 0.492 * (torch.tensor([0.0, 0.0, 1.0]) - _Y), 0.877 * (torch.tensor([1.0, 0.0, 0.0]) - _Y)])
U_MAX, V_MAX = 0.492 * (1 - 0.114), 0.877 * (1 - 0.299)


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [-1, 1] (the project's range) -> YUV with Y in [0, 1]."""
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YUV.to(x), (x + 1) / 2)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_yuv` (RGB back in [-1, 1])."""
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YUV).to(yuv), yuv) * 2 - 1


def chroma_bins(bins: int) -> torch.Tensor:
    """The (bins^2, 2) centres of a regular grid over the (U, V) plane: the colour classes (Zhang et al. quantise
    ab into 10-unit cells; here `bins` cells per axis over U's and V's ranges)."""
    u = torch.linspace(-U_MAX, U_MAX, bins + 1)
    v = torch.linspace(-V_MAX, V_MAX, bins + 1)
    uc, vc = (u[1:] + u[:-1]) / 2, (v[1:] + v[:-1]) / 2
    return torch.cartesian_prod(uc, vc)


def chroma_classes(uv: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, 2, H, W) chroma -> (N, H, W) index of its grid cell (hard encoding; Zhang et al. soft-encode over the
    5 nearest cells)."""
    iu = ((uv[:, 0] + U_MAX) / (2 * U_MAX) * bins).floor().clamp(0, bins - 1).long()
    iv = ((uv[:, 1] + V_MAX) / (2 * V_MAX) * bins).floor().clamp(0, bins - 1).long()
    return iu * bins + iv


def rebalancing_weights(counts: torch.Tensor, mix: float = 0.5) -> torch.Tensor:
    """Zhang et al. (2016), Eq. 3-4: w proportional to ((1 - lambda) p + lambda / Q)^-1 with p the empirical
    class distribution, normalised so that E_p[w] = 1: rare colours weigh more, the common desaturated ones less."""
    p = counts.float() / counts.float().sum().clamp_min(1)
    w = 1.0 / ((1 - mix) * p + mix / len(p))
    return w / (p * w).sum().clamp_min(1e-12)


# ---- denoising -------------------------------------------------------------------------------------------------

NOISES = ("none", "gaussian", "masking")


def corrupt(x: torch.Tensor, noise: str, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The corruption of a denoising autoencoder (Vincent et al. 2008): `masking` sets a fraction `level` of the
    pixels to 0 (the middle of [-1, 1]); `gaussian` adds N(0, level^2) noise; `none` leaves x as it is."""
    if noise == "none" or level == 0:
        return x
    draw = torch.rand if noise == "masking" else torch.randn
    r = draw(x.shape, generator=generator, device=generator.device if generator is not None else x.device).to(x)
    return x * (r >= level) if noise == "masking" else (x + level * r).clamp(-1, 1)


def normal_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) noise shaped like x, drawn from `generator` (a per-process one under DDP) when given."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device).to(x)
