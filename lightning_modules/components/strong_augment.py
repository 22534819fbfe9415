"""FixMatch's strong augmentation (Sohn et al. 2020, Sec. 2.3 and Table 12): RandAugment with a random
magnitude per image, then Cutout; made on the device, for the whole batch, each image its own draw.

For every image, `num_ops` operations (default 2) are drawn uniformly from `OPS`, each with a magnitude
drawn uniformly from its range in `RANGES` (FixMatch's "RandAugment with random magnitude": no global
magnitude to tune). Then a square of side drawn in (0, `cutout`] x image side is filled with grey.

Images are float NCHW in [-1, 1] (the project's normalisation); the operations work on u = (x + 1) / 2
in [0, 1] and return to [-1, 1]. Factors (brightness, colour, contrast, sharpness) blend with a
degenerate image as PIL's ImageEnhance does: out = degenerate + f (image - degenerate), f in
[0.05, 0.95] as in the paper's table. Geometric operations fill the uncovered area with black (the
digits' background; the paper's CIFAR code fills grey). Colour (saturation) is a no-op on grey images.

Per-image choice: for each slot, the batch is split by the drawn operation and each operation runs once
on its images, so a batch costs at most len(OPS) kernel calls per slot.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# FixMatch, Table 12 (RandAugment with random magnitudes): the range each magnitude is drawn from.
RANGES: dict[str, tuple[float, float]] = {
    "autocontrast": (0.0, 0.0),      # no magnitude
    "brightness": (0.05, 0.95),      # blend factor
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "equalize": (0.0, 0.0),
    "identity": (0.0, 0.0),
    "posterize": (4.0, 8.0),         # bits kept (rounded down)
    "rotate": (-30.0, 30.0),         # degrees
    "sharpness": (0.05, 0.95),
    "shear_x": (-0.3, 0.3),          # shear coefficient
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 1.0),          # threshold on [0, 1]: pixels at or above it are inverted
    "translate_x": (-0.3, 0.3),      # fraction of the image side
    "translate_y": (-0.3, 0.3),
}
CUTOUT_MAX = 0.5  # Cutout side: up to half the image side (Table 12)
_GRAY = (0.2989, 0.587, 0.114)


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor.view(-1, 1, 1, 1) * (image - degenerate)).clamp(0, 1)


def _gray(u: torch.Tensor) -> torch.Tensor:
    if u.shape[1] == 1:
        return u
    w = torch.tensor(_GRAY, device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * w).sum(1, keepdim=True)


def autocontrast(u, m):
    low = u.amin((2, 3), keepdim=True)
    high = u.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (u - low) / span.clamp_min(1e-8), u)


def brightness(u, m):
    return _blend(torch.zeros_like(u), u, m)


def color(u, m):
    return _blend(_gray(u).expand_as(u), u, m)


def contrast(u, m):
    mean = _gray(u).mean((1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(u), u, m)


def equalize(u, m):
    """Histogram equalisation per image and channel (256 levels), as PIL's ImageOps.equalize maps levels."""
    n, c, h, w = u.shape
    levels = (u * 255).round().long().clamp(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=u.device, dtype=u.dtype).scatter_add_(1, levels, torch.ones_like(levels, dtype=u.dtype))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    denom = (h * w - cdf_min).clamp_min(1)
    lut = ((cdf - cdf_min) / denom).clamp(0, 1)
    out = lut.gather(1, levels).view(n, c, h, w)
    flat = (hist > 0).sum(1) <= 1  # a single level: unchanged
    return torch.where(flat.view(n, c, 1, 1), u, out)


def identity(u, m):
    return u


def posterize(u, m):
    bits = m.floor().clamp(1, 8).long().view(-1, 1, 1, 1)
    levels = (u * 255).round().long().clamp(0, 255)
    shift = 8 - bits
    return ((levels >> shift) << shift).to(u.dtype) / 255


def _affine(u: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Output pixel p (in [-1, 1] coordinates) reads input pixel matrix @ [p, 1]; outside -> black."""
    grid = F.affine_grid(matrix.to(u.dtype), list(u.shape), align_corners=False)
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrices(n: int, device, dtype) -> torch.Tensor:
    eye = torch.zeros(n, 2, 3, device=device, dtype=dtype)
    eye[:, 0, 0] = eye[:, 1, 1] = 1
    return eye


def rotate(u, m):
    a = m * math.pi / 180
    mat = _matrices(len(u), u.device, u.dtype)
    mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return _affine(u, mat)


def sharpness(u, m):
    """PIL's SHARPEN-smooth blend: the degenerate image is the 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13
    inside, the original on the border."""
    c = u.shape[1]
    kernel = torch.ones(3, 3, device=u.device, dtype=u.dtype)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(u, kernel, padding=1, groups=c)
    degenerate = u.clone()
    degenerate[..., 1:-1, 1:-1] = smooth[..., 1:-1, 1:-1]
    return _blend(degenerate, u, m)


def shear_x(u, m):
    mat = _matrices(len(u), u.device, u.dtype)
    mat[:, 0, 1] = m
    return _affine(u, mat)


def shear_y(u, m):
    mat = _matrices(len(u), u.device, u.dtype)
    mat[:, 1, 0] = m
    return _affine(u, mat)


def solarize(u, m):
    return torch.where(u >= m.view(-1, 1, 1, 1), 1 - u, u)


def translate_x(u, m):
    mat = _matrices(len(u), u.device, u.dtype)
    mat[:, 0, 2] = -2 * m  # the image spans 2 units: a shift of m sides moves content by 2m
    return _affine(u, mat)


def translate_y(u, m):
    mat = _matrices(len(u), u.device, u.dtype)
    mat[:, 1, 2] = -2 * m
    return _affine(u, mat)


OPS = {name: globals()[name] for name in RANGES}


def cutout(u: torch.Tensor, side: torch.Tensor, generator=None) -> torch.Tensor:
    """A square of side `side` (fraction of the image side, one per image) at a uniform random centre,
    filled with grey (0.5)."""
    n, _, h, w = u.shape
    cy = torch.rand(n, generator=generator, device=u.device) * h
    cx = torch.rand(n, generator=generator, device=u.device) * w
    half_h, half_w = (side * h / 2).view(-1, 1), (side * w / 2).view(-1, 1)
    rows = torch.arange(h, device=u.device, dtype=u.dtype).view(1, -1) + 0.5
    cols = torch.arange(w, device=u.device, dtype=u.dtype).view(1, -1) + 0.5
    inside_r = (rows - cy.view(-1, 1)).abs() < half_h
    inside_c = (cols - cx.view(-1, 1)).abs() < half_w
    box = (inside_r[:, :, None] & inside_c[:, None, :]).unsqueeze(1)
    return torch.where(box, torch.full_like(u, 0.5), u)


def draw_magnitudes(name: str, n: int, generator=None, device=None) -> torch.Tensor:
    low, high = RANGES[name]
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


class StrongAugment:
    """RandAugment (random magnitudes) + Cutout, for a batch in [-1, 1]; image i gets its own draw."""

    def __init__(self, num_ops: int = 2, cutout: float = CUTOUT_MAX, ops: tuple[str, ...] | None = None):
        self.num_ops, self.cutout = int(num_ops), float(cutout)
        self.ops = tuple(ops or RANGES)
        unknown = sorted(set(self.ops) - set(RANGES))
        if unknown:
            raise ValueError(f"ops: unknown strong-augmentation operations {unknown}; choices: {sorted(RANGES)}")

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        u = ((x.float() + 1) / 2).clamp(0, 1)
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.ops), (len(u),), generator=generator, device=u.device)
            out = u.clone()
            for k, name in enumerate(self.ops):
                picked = (choice == k).nonzero().flatten()
                if len(picked):
                    m = draw_magnitudes(name, len(picked), generator, u.device)
                    out[picked] = OPS[name](u[picked], m).to(u.dtype)
            u = out
        if self.cutout > 0:
            side = torch.rand(len(u), generator=generator, device=u.device) * self.cutout
            u = cutout(u, side, generator)
        return (u * 2 - 1).to(x.dtype)
