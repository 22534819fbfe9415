"""PCA with whitening and L2 normalisation: DeepCluster's feature preprocessing (Caron et al. 2018,
Sec. 3.3 "the features are PCA-reduced to 256 dimensions, whitened and l2-normalized")."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pca_whiten(x: torch.Tensor, dim: int, whiten: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """Project centred rows on the top `dim` principal axes (capped by the feature size and the number
    of rows); with `whiten`, divide each axis by its standard deviation, so the projected covariance is
    the identity. Computed in float64 from the covariance's eigendecomposition."""
    x64 = x.detach().double()
    x64 = x64 - x64.mean(0, keepdim=True)
    dim = max(1, min(dim, x64.shape[1], max(1, len(x64) - 1)))
    cov = x64.T @ x64 / max(1, len(x64) - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals.flip(0)[:dim], eigvecs.flip(1)[:, :dim]
    z = x64 @ eigvecs
    if whiten:
        z = z / torch.sqrt(eigvals.clamp_min(0) + eps)
    return z.to(x.dtype if x.dtype.is_floating_point else torch.float32)


def preprocess_features(x: torch.Tensor, pca_dim: int | None, whiten: bool = True) -> torch.Tensor:
    """PCA (+ whitening) to `pca_dim` (None = keep the features as they are), then L2-normalise rows."""
    if pca_dim:
        x = pca_whiten(x, pca_dim, whiten=whiten)
    return F.normalize(x.float(), dim=1)
