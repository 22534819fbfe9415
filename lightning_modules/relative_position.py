"""Relative patch position (Doersch et al. 2015, "Unsupervised Visual Representation Learning by Context
Prediction").

From a 3x3 grid of patches (with gaps between them and a random jitter of each patch, Sec. 3, so that the task
cannot be solved by continuing lines or textures across the border), the centre patch and one of its 8
neighbours are given to a pair of networks with shared weights; a classifier on the concatenated features
predicts where the neighbour lies:

    k ~ U{1..8},  L = CE( g([f(p_centre), f(p_k)]), k )         (Fig. 2-3)

(The paper's chromatic-aberration counter-measures are not reproduced.) Downstream the trunk f takes whole images, so the patches leave BatchNorm's running statistics to the whole images
(`running_stats_frozen`; without it: 79.1% kNN / 31.8% linear on MNIST, below the random init's 82.0 / 69.3).
Nothing is mixed across the batch except BatchNorm. Images must be large enough for 3x3 patches of `min_tile` px:
checked before training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .components.heads import ProjectionMLP
from .components.modes import running_stats_frozen
from .components.pretext import (
    CENTRE,
    NEIGHBOURS,
    check_tile_size,
    cut_tiles,
)
from .ssl_base import SSLMethod

GRID = 3


class RelativePosition(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 gap: float = 0.2, jitter: bool = True, min_tile: int = 6, head_hidden_dim: int = 512, **ssl_options):
        check_tile_size(image_size, GRID, gap, min_tile, "relative_position")
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        self.gap, self.jitter = gap, jitter
        self.register_buffer("neighbours", torch.tensor(NEIGHBOURS), persistent=False)
        self.head = ProjectionMLP(2 * self.backbone.num_features, head_hidden_dim, len(NEIGHBOURS), num_layers=2,
                                  batch_norm=True)

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        n = len(x)
        generator = self.draw_generator(x.device)
        tiles = cut_tiles(x, GRID, self.gap, self.jitter, generator)  # (N, 9, C, t, t)
        k = torch.randint(0, len(NEIGHBOURS), (n,), generator=generator,
                          device=generator.device if generator is not None else None).to(x.device)
        rows = torch.arange(n, device=x.device)
        pair = torch.cat([tiles[:, CENTRE], tiles[rows, self.neighbours[k]]])  # (2N, C, t, t): one trunk pass
        with running_stats_frozen(self.backbone):  # BatchNorm's running statistics stay those of whole images
            h_centre, h_other = self.backbone(pair).chunk(2)
        loss = F.cross_entropy(self.head(torch.cat([h_centre, h_other], dim=1)).float(), k)
        return loss, self.backbone(x)
