"""Fuzzy c-means (Bezdek 1981) in torch: soft memberships instead of hard k-means assignments.

Minimises J_m = sum_i sum_j u_ij^m ||x_i - v_j||^2 subject to sum_j u_ij = 1, u_ij >= 0, by
alternating the two closed-form updates

    u_ij = 1 / sum_l (d_ij / d_il)^(2 / (m - 1))          (memberships, d = Euclidean distance)
    v_j  = sum_i u_ij^m x_i / sum_i u_ij^m                  (centres)

The exponent m > 1 sets the fuzziness: m -> 1 gives k-means' hard assignments, large m spreads every
point over all clusters. m = 2 is the usual choice. A point on a cluster boundary gets comparable
memberships in both clusters: that is the ambiguity the course notes use it to expose.
Centres start from k-means++ seeding (`components.kmeans`), so a seed fixes the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.errors import ConfigError

from .kmeans import kmeans_plusplus, squared_distances


@dataclass
class FuzzyResult:
    memberships: torch.Tensor  # (N, c), rows sum to 1
    centres: torch.Tensor  # (c, D)
    objective: float  # J_m at the returned memberships and centres
    n_iter: int

    @property
    def assignments(self) -> torch.Tensor:
        """The hard clustering: each point's cluster of largest membership."""
        return self.memberships.argmax(1)


def memberships(x: torch.Tensor, centres: torch.Tensor, m: float) -> torch.Tensor:
    """u_ij for fixed centres. A point sitting on a centre belongs to it entirely."""
    d2 = squared_distances(x, centres)
    on_centre = d2 <= 1e-12
    # (d_ij / d_il)^(2/(m-1)) = (d2_ij / d2_il)^(1/(m-1)); written as a softmax of -log(d2)/(m-1) for stability
    u = torch.softmax(-torch.log(d2.clamp_min(1e-12)) / (m - 1.0), dim=1)
    hit = on_centre.any(1)
    if hit.any():
        u[hit] = on_centre[hit].float() / on_centre[hit].float().sum(1, keepdim=True)
    return u


def update_centres(x: torch.Tensor, u: torch.Tensor, m: float) -> torch.Tensor:
    w = u.pow(m)
    return (w.T @ x) / w.sum(0).clamp_min(1e-12)[:, None]


def objective(x: torch.Tensor, u: torch.Tensor, centres: torch.Tensor, m: float) -> float:
    return float((u.pow(m) * squared_distances(x, centres)).sum())


@torch.no_grad()
def fuzzy_cmeans(x: torch.Tensor, c: int, m: float = 2.0, n_iter: int = 100, tol: float = 1e-5,
                 seed: int = 0) -> FuzzyResult:
    """Fuzzy c-means of the rows of `x` into `c` clusters; stops when no membership moves by more than `tol`."""
    if m <= 1.0:
        raise ConfigError(f"fuzzy c-means exponent m={m} must be > 1 (m -> 1 is k-means; 2 is the usual choice)")
    if c < 2 or len(x) < c:
        raise ConfigError(f"fuzzy c-means needs 2 <= clusters <= number of points; got {c} for {len(x)} points")
    x = x.detach().float()
    centres = kmeans_plusplus(x, c, torch.Generator().manual_seed(seed))
    u = memberships(x, centres, m)
    for step in range(1, n_iter + 1):
        centres = update_centres(x, u, m)
        new_u = memberships(x, centres, m)
        change = float((new_u - u).abs().max())
        u = new_u
        if change <= tol:
            break
    return FuzzyResult(u, centres, objective(x, u, centres, m), step)
