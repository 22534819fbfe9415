"""Datasets built from installed packages only: no file and no network needed.

- `digits`: scikit-learn's 1,797 real handwritten digits (8x8, 16 grey levels, from the UCI
  "Optical Recognition of Handwritten Digits" set). Each is upsampled bilinearly to 20x20 and
  centred in a 28x28 frame, the way MNIST centres its 20x20 digits.
- `digits_m`: the same digits blended with colour photographs the way Ganin et al. (2016,
  Sec. 5.1) built MNIST-M: out = |patch - digit| per channel, with the patch a random 28x28 crop
  of a photograph. Ganin used BSDS500 photographs; here they are the natural photographs
  scikit-image ships (astronaut, coffee, chelsea, rocket, hubble), so nothing is
  downloaded. The crop choice is seeded, so the dataset is deterministic given its seed.
- `blend_with_photos` applies the same construction to any grey digit tensor (used by `mnist_m`).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


@functools.lru_cache(maxsize=1)
def sklearn_digits_28() -> tuple[torch.Tensor, np.ndarray]:
    """(1797, 1, 28, 28) uint8 digits with ink bright on a dark background, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(img[..., :3].astype(np.uint8))
    return tuple(out)


def blend_with_photos(digits: torch.Tensor, seed: int) -> torch.Tensor:
    """MNIST-M construction: |photo patch - digit| for grey uint8 digits (N, 1, H, W) -> (N, 3, H, W)."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    n, _, h, w = digits.shape
    which = rng.integers(len(photos), size=n)
    patches = np.empty((n, h, w, 3), dtype=np.uint8)
    for i, p in enumerate(which):
        photo = photos[p]
        top = rng.integers(photo.shape[0] - h + 1)
        left = rng.integers(photo.shape[1] - w + 1)
        patches[i] = photo[top : top + h, left : left + w]
    patches_t = torch.from_numpy(patches).permute(0, 3, 1, 2).to(torch.int16)
    return (patches_t - digits.to(torch.int16)).abs().to(torch.uint8)


def digits() -> tuple[torch.Tensor, np.ndarray]:
    return sklearn_digits_28()


def digits_m(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = sklearn_digits_28()
    return blend_with_photos(images, seed), labels
