"""Deep Adaptive Image Clustering (Chang et al. 2017, "DAC"; the course notes' DAIC) as pure functions.

Label features l_i in R^k: non-negative (a softmax) and L2-normalised, so the cosine similarity
l_i . l_j lies in [0, 1] and is 1 only for two images in the same one-hot cluster. Pairs are labeled
by two thresholds that move with lambda (Sec. 3.2-3.3 of the paper):

    r_ij = 1 if l_i . l_j >= u(lambda),  0 if l_i . l_j < l(lambda),  unused otherwise
    u(lambda) = 0.95 - lambda,   l(lambda) = 0.455 + 0.1 lambda

and the network minimises sum_ij v_ij L(r_ij, l_i . l_j) with L the binary cross-entropy and
v_ij = 1 for the selected pairs. lambda grows (the alternating step minimises u(lambda) - l(lambda),
whose gradient is -1.1), so more pairs enter as training goes, until u meets l at
lambda = (0.95 - 0.455) / 1.1 = 0.45. The reference implementation adds 1.1 * 0.009 to lambda per
epoch of 1,000 steps; here lambda is a function of the run's progress that reaches the crossing at
the end of the run, so the curriculum fits any budget.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

U0, L0 = 0.95, 0.455            # u(0), l(0)
DU, DL = -1.0, 0.1              # du/dlambda, dl/dlambda
LAMBDA_END = (U0 - L0) / (DL - DU)  # 0.45: u(lambda) = l(lambda)
EPS = 1e-7


def thresholds(lam: float) -> tuple[float, float]:
    """(u(lambda), l(lambda))."""
    return U0 + DU * lam, L0 + DL * lam


def lambda_at(progress: float) -> float:
    """lambda after a fraction `progress` of the run: linear from 0 to the crossing."""
    return LAMBDA_END * min(max(progress, 0.0), 1.0)


def label_features(logits: torch.Tensor) -> torch.Tensor:
    """l_i: softmax (non-negative) then L2 normalisation."""
    return F.normalize(torch.softmax(logits.float(), dim=1), dim=1)


def select_pairs(similarity: torch.Tensor, upper: float, lower: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the pairs labeled similar (r = 1) and dissimilar (r = 0)."""
    return similarity >= upper, similarity < lower


def daic_loss(features: torch.Tensor, upper: float, lower: float, others: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_ij v_ij BCE(r_ij, l_i . l_j) / (N M) over the pairs of `features` (N, k) with `others`
    (M, k; default the same rows: all N^2 ordered pairs, as the reference implementation). Returns
    the loss and the fractions of pairs selected as similar / dissimilar."""
    others = features if others is None else others
    sim = (features @ others.T).clamp(EPS, 1 - EPS)
    positive, negative = select_pairs(sim.detach(), upper, lower)
    bce = -(positive * sim.log() + negative * (1 - sim).log())
    stats = {"positive_pairs": float(positive.float().mean()), "negative_pairs": float(negative.float().mean())}
    return bce.sum() / sim.numel(), stats
