"""AaD: Attracting and Dispersing (Yang et al., "Attracting and Dispersing: A Simple Approach for Source-free
Domain Adaptation", NeurIPS 2022): a neighbourhood method.

A feature bank and a score (softmax) bank hold every target training image, filled by one pass at the start
and updated with each batch. For each image, its K nearest neighbours in the feature bank (cosine) are its
neighbourhood; the prediction is pulled towards theirs and pushed away from the rest of the batch:

    L = -1/B sum_i sum_{j in N_i} p_i . s_j  +  alpha(t) 1/B sum_i sum_{m != i} p_i . p_m        (Eq. 4-5)

with alpha(t) = alpha (1 + 10 t)^(-decay), t the run's progress (the paper's decaying weight). Under DDP the
banks are updated with every process's batch (gathered), so all processes hold the same banks, and the
dispersion runs over the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError

from .components.distributed import gather_rows, gather_with_grad
from .components.source_free import aad_loss, nearest_neighbours
from .source_free import SourceFree


class AaD(SourceFree):
    def __init__(self, *args, k: int = 5, alpha: float = 1.0, decay: float = 0.75, **kwargs):
        super().__init__(*args, **kwargs)
        if k < 1:
            raise ConfigError(f"model.k={k} (neighbours) must be >= 1")
        self.k, self.alpha, self.decay = int(k), float(alpha), float(decay)
        self.register_buffer("feature_bank", torch.zeros(0), persistent=False)
        self.register_buffer("score_bank", torch.zeros(0), persistent=False)

    def on_train_start(self) -> None:
        features, probs, _ = self.target_predictions()
        if len(features) <= self.k:
            raise ConfigError(f"model.k={self.k} neighbours but the target has {len(features)} training images")
        self.feature_bank, self.score_bank = F.normalize(features, dim=1), probs

    def adaptation_losses(self, x, positions):
        features = self.backbone(x)
        probs = self.classifier(features).float().softmax(1)
        with torch.no_grad():
            f = F.normalize(features.detach().float(), dim=1)
            all_positions = gather_rows(positions)
            self.feature_bank[all_positions] = gather_rows(f)
            self.score_bank[all_positions] = gather_rows(probs.detach())
            neighbours = nearest_neighbours(f, self.feature_bank, self.k, exclude=positions)
        alpha = self.alpha * (1 + 10 * self.progress) ** (-self.decay)
        loss, attraction, dispersion = aad_loss(probs, self.score_bank[neighbours], gather_with_grad(probs), alpha)
        return {"train/loss": loss, "train/attraction": attraction, "train/dispersion": dispersion}
