"""View augmentations for self-supervised learning (SimCLR, Chen et al. 2020, Appendix A; MoCo v2).

One random view = random resized crop -> horizontal flip -> colour jitter (p) -> grayscale (p) ->
Gaussian blur (p) -> invert (p, off by default) -> channel permutation (p, off by default), plus
the 4-way rotation of Gidaris et al. (2018)
for the rotation pretext.

Two interchangeable paths, chosen by `augment.backend`:

- `batched`: the whole batch on the device (`ViewAugmenter.batch`), uint8 NCHW in, one kernel
  call per operation, an independent parameter draw per image. The fast path for datasets held
  in memory as one uint8 tensor (`TensorImageDataset`).
- `per_sample`: torchvision transforms v2 functionals on one image at a time
  (`ViewAugmenter.single`), in DataLoader workers. The general path (image files).

Both consume the same parameter draw (`ViewAugmenter.sample` -> `ViewParams`), and for a fixed
draw they give the same image (up to float rounding; tested in tests/test_ssl_augment.py). The
colour-jitter operations run in a fixed order (brightness, contrast, saturation, hue) so that a
draw determines the output.

Strengths scale with the image (`AugmentSpec.resolve`): smaller images get a larger minimum crop
area; grey images get no saturation/hue/grayscale (they would be no-ops); the blur kernel is 10% of
the image side (odd), and blur is off below 64 px as in SimCLR's CIFAR setting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from .errors import ConfigError, check_known_options

BACKENDS = ("auto", "batched", "per_sample")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclass
class AugmentSpec:
    """Augmentation strengths. `None` = scaled to the image size and channel count (see `resolve`)."""

    backend: str = "auto"
    crop_scale: tuple[float, float] | None = None  # area fraction range of RandomResizedCrop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter_strength: float = 0.5  # SimCLR's s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    grayscale_p: float | None = None
    blur_p: float | None = None
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    # Photometric inversion (1 - x). Off in SimCLR; on MNIST-M-style digits (a photo patch blended by
    # |patch - digit|) a digit is dark on bright patches and bright on dark ones, and inversion keeps
    # that polarity from identifying a view. (On digits_m it hurt SimCLR and MoCo: ssl_textured.md.)
    invert_p: float = 0.0
    # Random permutation of the RGB channels (one of the 5 non-identity orders). Colour is a shortcut
    # when two views of one image share a tint that other images lack; jitter alone leaves much of it.
    channel_perm_p: float = 0.0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"augment.backend={self.backend!r}; choices: {list(BACKENDS)}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "invert_p", "channel_perm_p"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 1.0:
                raise ConfigError(f"augment.{name}={p} must lie in [0, 1]")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"augment.crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ConfigError(f"augment.blur_kernel={self.blur_kernel} must be a positive odd integer")

    @classmethod
    def from_config(cls, cfg: dict | None) -> "AugmentSpec":
        cfg = dict(cfg or {})
        check_known_options(cfg, sorted(f.name for f in fields(cls)), "augment")
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(float(v) for v in cfg[key])
        return cls(**cfg)

    def resolve(self, image_size: int, channels: int) -> "AugmentSpec":
        """Fill the `None` strengths for images of `image_size` px and `channels` channels."""
        colour = channels == 3
        scale = self.crop_scale or ((0.08, 1.0) if image_size >= 64 else (0.2, 1.0) if image_size >= 32 else (0.4, 1.0))
        kernel = self.blur_kernel or max(3, int(0.1 * image_size) // 2 * 2 + 1)
        return replace(
            self,
            crop_scale=scale,
            grayscale_p=(0.2 if colour else 0.0) if self.grayscale_p is None else self.grayscale_p,
            blur_p=(0.5 if image_size >= 64 else 0.0) if self.blur_p is None else self.blur_p,
            blur_kernel=kernel,
        )


@dataclass
class ViewParams:
    """One parameter draw for N images (all tensors of length N)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: colour jitter applied
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor  # bool
    blur: torch.Tensor  # bool
    sigma: torch.Tensor
    invert: torch.Tensor  # bool
    perm: torch.Tensor  # int in [0, 6): index into CHANNEL_ORDERS, 0 = unchanged

    def __getitem__(self, i: int) -> dict:
        return {f.name: getattr(self, f.name)[i].item() for f in fields(self)}

    def __len__(self) -> int:
        return len(self.top)


def _channel_orders(n, p, generator, device):
    """Per image: 0 (channels unchanged) or, with probability p, one of the 5 other orders uniformly.
    Drawn only when p > 0, so runs without permutation keep their random stream."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.long, device=device)
    permute = torch.rand(n, generator=generator, device=device) < p
    other = torch.randint(1, len(CHANNEL_ORDERS), (n,), generator=generator, device=device)
    return torch.where(permute, other, torch.zeros_like(other))


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def sample_crops(n: int, height: int, width: int, scale, ratio, generator=None, device=None, tries: int = 10):
    """RandomResizedCrop.get_params vectorised: up to `tries` draws per image, first valid one wins,
    else the central crop with the ratio clamped to `ratio` (torchvision's fallback)."""
    area = height * width
    target = area * _uniform((n, tries), *scale, generator, device).view(n, tries)
    log_r = _uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=ok.device))
    # fallback: whole image, ratio clamped
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    pick = first.clamp(min=0).unsqueeze(1)
    valid = first >= 0
    h = torch.where(valid, h.gather(1, pick).squeeze(1), torch.full_like(first, fh))
    w = torch.where(valid, w.gather(1, pick).squeeze(1), torch.full_like(first, fw))
    u = torch.rand(n, 2, generator=generator, device=ok.device)
    top = torch.where(valid, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(valid, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return top, left, h, w


class ViewAugmenter:
    """Draws view parameters and applies them, batched on the device or one image at a time.

    Images are float in [0, 1] inside; `batch` takes uint8 (N, C, H, W) and returns float [-1, 1].
    """

    def __init__(self, spec: AugmentSpec, image_size: int, channels: int):
        self.spec = spec.resolve(image_size, channels)
        self.image_size, self.channels = image_size, channels

    # ---- parameters ---------------------------------------------------------------------------
    def sample(self, n: int, height: int, width: int, generator=None, device=None) -> ViewParams:
        s, g = self.spec, generator
        top, left, h, w = sample_crops(n, height, width, s.crop_scale, s.crop_ratio, g, device)
        k = s.jitter_strength

        def bern(p):
            return torch.rand(n, generator=g, device=device) < p

        colour = self.channels == 3
        return ViewParams(
            top=top, left=left, height=h, width=w,
            flip=bern(s.flip_p),
            jitter=bern(s.jitter_p),
            brightness=_uniform(n, max(0.0, 1 - 0.8 * k), 1 + 0.8 * k, g, device),
            contrast=_uniform(n, max(0.0, 1 - 0.8 * k), 1 + 0.8 * k, g, device),
            saturation=_uniform(n, max(0.0, 1 - 0.8 * k), 1 + 0.8 * k, g, device) if colour else torch.ones(n, device=device),
            hue=_uniform(n, -min(0.5, 0.2 * k), min(0.5, 0.2 * k), g, device) if colour else torch.zeros(n, device=device),
            gray=bern(s.grayscale_p) if colour else torch.zeros(n, dtype=torch.bool, device=device),
            blur=bern(s.blur_p),
            sigma=_uniform(n, *s.blur_sigma, g, device),
            # drawn only when used, so that runs without inversion keep their random stream
            invert=bern(s.invert_p) if s.invert_p > 0 else torch.zeros(n, dtype=torch.bool, device=device),
            perm=_channel_orders(n, s.channel_perm_p if colour else 0.0, g, device),
        )

    # ---- per-sample path: torchvision transforms v2 -------------------------------------------
    def single(self, image: torch.Tensor, p: dict) -> torch.Tensor:
        """One view of one float [0, 1] image (C, H, W) with the draw `p` (= `ViewParams[i]`)."""
        size = [self.image_size, self.image_size]
        x = TF.resized_crop(image, p["top"], p["left"], p["height"], p["width"], size,
                            interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        if p["flip"]:
            x = TF.horizontal_flip(x)
        if p["jitter"]:
            x = TF.adjust_brightness(x, p["brightness"])
            x = TF.adjust_contrast(x, p["contrast"])
            x = TF.adjust_saturation(x, p["saturation"])
            x = TF.adjust_hue(x, p["hue"])
        if p["gray"]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if p["blur"]:
            x = TF.gaussian_blur(x, [self.spec.blur_kernel] * 2, [p["sigma"]] * 2)
        if p["invert"]:
            x = TF.invert(x)
        return x[list(CHANNEL_ORDERS[p["perm"]])] if p["perm"] else x

    def __call__(self, image: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-sample transform: float image in [-1, 1] (a dataset item) -> one random view in [-1, 1]."""
        p = self.sample(1, image.shape[-2], image.shape[-1], generator)[0]
        return self.single((image + 1) / 2, p) * 2 - 1

    # ---- batched path: the same operations for N images at once --------------------------------
    def apply(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """Float [0, 1] (N, C, H, W) -> views (N, C, S, S) in [0, 1], image i with draw i."""
        x = resized_crop_batch(x, p.top, p.left, p.height, p.width, self.image_size)
        x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(-1), x)
        j = p.jitter.view(-1, 1, 1, 1)
        x = torch.where(j, (x * p.brightness.view(-1, 1, 1, 1)).clamp(0, 1), x)
        x = torch.where(j, _blend(x, _grayscale(x).mean((1, 2, 3), keepdim=True), p.contrast), x)
        if x.shape[1] == 3:
            x = torch.where(j, _blend(x, _grayscale(x), p.saturation), x)
            x = torch.where(j, adjust_hue_batch(x, p.hue), x)
            x = torch.where(p.gray.view(-1, 1, 1, 1), _grayscale(x).expand_as(x), x)
        if p.blur.any():
            x = torch.where(p.blur.view(-1, 1, 1, 1), gaussian_blur_batch(x, self.spec.blur_kernel, p.sigma), x)
        x = torch.where(p.invert.view(-1, 1, 1, 1), 1 - x, x)
        if p.perm.any():
            order = torch.tensor(CHANNEL_ORDERS, device=x.device)[p.perm]  # (N, 3)
            x = x.gather(1, order.view(-1, 3, 1, 1).expand_as(x))
        return x

    def batch(self, images_uint8: torch.Tensor, generator=None) -> torch.Tensor:
        """uint8 (N, C, H, W) on any device -> one independent random view per image, float [-1, 1]."""
        x = images_uint8.float().div_(255)
        p = self.sample(len(x), x.shape[-2], x.shape[-1], generator, x.device)
        return self.apply(x, p).mul_(2).sub_(1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r = ratio.view(-1, 1, 1, 1)
    return (a * r + b * (1 - r)).clamp(0, 1)


def adjust_hue_batch(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue with one hue shift per image."""
    h, s, v = _rgb_to_hsv(x).unbind(1)
    h = (h + hue.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), 1))


def _source_coords(start, length, out_size, in_size):
    """Normalised (align_corners=False) source coordinates of a bilinear resize (no antialias) of the crop
    [start, start + length) to out_size, as torch's upsample_bilinear2d computes them:
    src = (dst + 0.5) * length / out_size - 0.5, clamped to [0, length - 1] (the edge pixel repeats)."""
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32)
    src = (dst + 0.5) * (length.float().unsqueeze(1) / out_size) - 0.5
    src = torch.minimum(src.clamp(min=0), (length - 1).float().unsqueeze(1)) + start.float().unsqueeze(1)
    return (2 * src + 1) / in_size - 1


def resized_crop_batch(x, top, left, height, width, size: int) -> torch.Tensor:
    """Crop box i of image i and resize it to size x size, for a whole batch in one grid_sample."""
    n, _, H, W = x.shape
    gy = _source_coords(top, height, size, H).view(n, size, 1).expand(n, size, size)
    gx = _source_coords(left, width, size, W).view(n, 1, size).expand(n, size, size)
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_kernels(kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(N, k) normalised 1-D Gaussians, as torchvision's _get_gaussian_kernel1d, one sigma per row."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, kernel_size, device=sigma.device)
    return torch.softmax(-(t.view(1, -1) / sigma.view(-1, 1)).pow(2), dim=1)


def gaussian_blur_batch(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur image i with sigma i (reflect padding, separable kernel), in one grouped conv per axis."""
    n, c, h, w = x.shape
    k = gaussian_kernels(kernel_size, sigma).repeat_interleave(c, 0)  # (N*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


# ---- rotation (Gidaris et al. 2018) ----------------------------------------------------------


def rotate90_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i by k_i * 90 degrees counter-clockwise (square images), on x's device."""
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out


def rotate90_single(image: torch.Tensor, k: int) -> torch.Tensor:
    """The per-sample path of `rotate90_batch`: torchvision's rotate by k * 90 degrees."""
    return TF.rotate(image, 90.0 * k)


def all_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four rotated copies of every image (Gidaris et al. 2018, Sec. 3.1) and their labels 0..3."""
    n = len(x)
    k = torch.arange(4, device=x.device).repeat_interleave(n)
    return rotate90_batch(x.repeat(4, 1, 1, 1), k), k
