"""Random affine augmentation of labeled training batches, on the device.

`data.train_augment` (null = off) gives every training image its own draw of
- `scale` [min, max]: the object's size factor; < 1 zooms out (the image shrinks inside the frame),
- `translate`: the largest shift, as a fraction of the image side,
- `degrees`: the largest rotation either way,
- `flip_p`: probability of a horizontal flip (0 for digits),
- `padding`: what fills the uncovered area: `zeros` (black, the minimum value), `border` or `reflection`.

The batch is transformed in one `grid_sample` call after it reaches the device, so it works for
in-memory tensors and image files alike and costs next to nothing. A typical use is making digit
features independent of how the digit is framed, e.g. USPS (digits fill the frame) for MNIST
(digits sit in a 20x20 box): `train_augment: {scale: [0.6, 1.0], translate: 0.08}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .errors import ConfigError, check_known_options

PADDINGS = ("zeros", "border", "reflection")


@dataclass
class AffineAugment:
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    degrees: float = 0.0
    flip_p: float = 0.0
    padding: str = "zeros"

    def __post_init__(self):
        where = "data.train_augment"
        self.scale = tuple(float(v) for v in self.scale)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"{where}.scale={list(self.scale)} must be [min, max] with 0 < min <= max")
        if not 0.0 <= self.translate <= 1.0:
            raise ConfigError(f"{where}.translate={self.translate} must lie in [0, 1] (fraction of the image side)")
        if not 0.0 <= self.degrees <= 180.0:
            raise ConfigError(f"{where}.degrees={self.degrees} must lie in [0, 180]")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ConfigError(f"{where}.flip_p={self.flip_p} must lie in [0, 1]")
        if self.padding not in PADDINGS:
            raise ConfigError(f"{where}.padding={self.padding!r}; choices: {list(PADDINGS)}")

    @classmethod
    def from_config(cls, cfg: dict | None) -> "AffineAugment | None":
        if cfg is None:
            return None
        cfg = dict(cfg)
        check_known_options(cfg, [f.name for f in fields(cls)], "data.train_augment")
        return cls(**cfg)

    def draw(self, n: int, generator=None, device=None) -> dict[str, torch.Tensor]:
        """Independent parameters for n images: scale, angle (radians), shift (x, y) in [-1, 1] units, flip."""
        def uniform(low, high, *shape):
            return torch.rand(n, *shape, generator=generator, device=device) * (high - low) + low

        return {
            "scale": uniform(*self.scale),
            "angle": uniform(-math.radians(self.degrees), math.radians(self.degrees)),
            "shift": uniform(-2 * self.translate, 2 * self.translate, 2),  # the image spans [-1, 1]: side = 2
            "flip": torch.rand(n, generator=generator, device=device) < self.flip_p,
        }

    @staticmethod
    def theta(params: dict[str, torch.Tensor]) -> torch.Tensor:
        """affine_grid's (N, 2, 3) map from output to input coordinates: the inverse of
        p_out = s R(a) p_in + t, i.e. p_in = R(-a) (p_out - t) / s."""
        s, a, t = params["scale"], params["angle"], params["shift"]
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(-a) / s
        return torch.cat([inverse, -(inverse @ t.unsqueeze(-1))], -1)

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] (N, C, H, W) -> transformed images, image i with draw i."""
        grid = F.affine_grid(self.theta(params).to(x.dtype), list(x.shape), align_corners=False)
        # shifted to [0, 2] so that `zeros` padding is black (-1) after shifting back
        out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode=self.padding, align_corners=False) - 1
        return torch.where(params["flip"].view(-1, 1, 1, 1), out.flip(-1), out)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), generator, x.device))
