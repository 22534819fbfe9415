"""Losses of source-free domain adaptation, as pure functions (unit-tested against hand cases).

- SHOT (Liang et al., ICML 2020, Sec. 3.2-3.3): information maximisation
      L_ent = -E_x sum_k p_k log p_k,   L_div = sum_k pbar_k log pbar_k,   pbar = E_x p(x),
  confident (low entropy) and diverse (high entropy of the mean) target predictions; and
  self-supervised pseudo-labels from class centroids of the target features: the first centroids
  weighted by the soft predictions (Eq. 4), labels by the nearest centroid in cosine distance (Eq. 5),
  then centroids of those hard labels and labels again (Eq. 6).
- AaD (Yang et al., NeurIPS 2022, Eq. 4-5): attract each prediction to those of its K nearest target
  neighbours in feature space (banks kept over the whole target set), disperse it from the other
  predictions of the batch: L = -1/B sum_i sum_{j in N_i} p_i . s_j + alpha 1/B sum_i sum_{m != i} p_i . p_m.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) per row (natural log)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def information_maximization_loss(probs: torch.Tensor, mean_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(L_ent + L_div, L_ent, L_div). `mean_probs`: pbar over the global batch (DDP), default the mean of `probs`."""
    mean_probs = probs.mean(0) if mean_probs is None else mean_probs
    ent = entropy(probs).mean()
    div = -entropy(mean_probs)
    return ent + div, ent, div


def _nearest_centroid(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    centroids = weights.T @ features / (weights.sum(0)[:, None] + 1e-8)
    distance = 1 - F.normalize(features, dim=1) @ F.normalize(centroids, dim=1).T  # cosine distance
    return distance.argmin(1)


@torch.no_grad()
def centroid_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """SHOT's labels of every target example: features augmented with a constant 1 and L2-normalised (as in
    SHOT's code), soft-weighted centroids (Eq. 4) -> nearest-centroid labels (Eq. 5), then `rounds` times
    hard-label centroids -> labels (Eq. 6)."""
    f = features.float()
    f = F.normalize(torch.cat([f, torch.ones(len(f), 1, device=f.device)], 1), dim=1)
    labels = _nearest_centroid(f, probs.float())
    for _ in range(rounds):
        labels = _nearest_centroid(f, F.one_hot(labels, probs.shape[1]).float())
    return labels


@torch.no_grad()
def nearest_neighbours(features: torch.Tensor, bank: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """Positions in `bank` of the k rows nearest (cosine) to each row of `features`, the row's own position
    `exclude` left out. Both L2-normalised."""
    similarity = features @ bank.T
    similarity[torch.arange(len(features), device=features.device), exclude] = -float("inf")
    return similarity.topk(k, dim=1).indices


def aad_loss(probs: torch.Tensor, neighbour_scores: torch.Tensor, batch_probs: torch.Tensor | None = None,
             alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, attraction, dispersion). `probs` (B, C) with gradient; `neighbour_scores` (B, K, C) from the
    score bank (no gradient); `batch_probs`: the batch the dispersion runs over, each row of `probs` among
    them (default `probs` itself; under DDP the global batch, gathered with gradient)."""
    attraction = -(probs.unsqueeze(1) * neighbour_scores).sum(-1).sum(1).mean()
    others = probs if batch_probs is None else batch_probs
    dispersion = ((probs @ others.T).sum(1) - (probs * probs).sum(1)).mean()  # sum over m != i
    return attraction + alpha * dispersion, attraction, dispersion
