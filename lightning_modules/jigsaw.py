"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles").

An image is cut into a 3x3 grid of tiles, with a gap between tiles and a random jitter of each tile inside its
cell (so edges and lines do not continue across tiles: Sec. 3.3's shortcuts); the tiles are shuffled by one of a
fixed set of `num_permutations` permutations chosen for large Hamming distance (Sec. 3.2, Algorithm 1,
`components.pretext.jigsaw_permutations`), and the network predicts the index of that permutation:

    tiles_i = tile_{P_k(i)}(x),  k ~ U{1..K}
    L = CE( g([f(tiles_1), ..., f(tiles_9)]), k )                  (the context-free network, Fig. 3)

f is the shared encoder (a siamese trunk applied to every tile), g an MLP on the 9 concatenated features.
Downstream (kNN, the probe, `encoder.pt`) the trunk takes whole images, so the tiles pass through BatchNorm with
their own batch statistics but leave the running statistics to the whole images (without this the trunk fell
below its random initialisation on MNIST: 75.6% kNN / 38.7% linear against 82.0 / 69.3). Nothing is mixed across the batch except
the trunk's BatchNorm. Images must be large enough for 3x3 tiles of `min_tile` px: checked before training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .components.heads import ProjectionMLP
from .components.modes import running_stats_frozen
from .components.pretext import (
    check_tile_size,
    cut_tiles,
    jigsaw_permutations,
)
from .ssl_base import SSLMethod

GRID = 3


class Jigsaw(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 num_permutations: int = 100, permutation_seed: int = 0, gap: float = 0.2, jitter: bool = True,
                 min_tile: int = 6, head_hidden_dim: int = 512, **ssl_options):
        check_tile_size(image_size, GRID, gap, min_tile, "jigsaw")
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        self.gap, self.jitter = gap, jitter
        self.register_buffer("permutations", jigsaw_permutations(num_permutations, GRID * GRID, permutation_seed),
                             persistent=False)  # rebuilt from the seed: deterministic
        self.head = ProjectionMLP(GRID * GRID * self.backbone.num_features, head_hidden_dim, num_permutations,
                                  num_layers=2, batch_norm=True)

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        n = len(x)
        generator = self.draw_generator(x.device)
        tiles = cut_tiles(x, GRID, self.gap, self.jitter, generator)  # (N, 9, C, t, t)
        k = torch.randint(0, len(self.permutations), (n,), generator=generator,
                          device=generator.device if generator is not None else None).to(x.device)
        shuffled = tiles[torch.arange(n, device=x.device)[:, None], self.permutations[k]]  # position i: tile P_k(i)
        with running_stats_frozen(self.backbone):  # BatchNorm's running statistics stay those of whole images
            h = self.backbone(shuffled.flatten(0, 1)).view(n, -1)  # the siamese trunk over all 9N tiles
        loss = F.cross_entropy(self.head(h).float(), k)
        return loss, self.backbone(x)
