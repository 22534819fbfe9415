"""Scores of a clustering against the true classes, and a report for choosing k.

- `hungarian_accuracy`: accuracy under the best one-to-one matching of clusters to classes (the
  Hungarian algorithm on the contingency table, `scipy.optimize.linear_sum_assignment`), the ACC of
  the clustering literature (e.g. Xie et al. 2016, eq. 10). With more clusters than classes, the
  unmatched clusters count as wrong.
- `cluster_scores`: ACC, NMI and ARI (scikit-learn) under the metric names every clustering method logs.
- `k_selection`: silhouette and k-means objective over a range of k, for data whose k is unknown.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from .kmeans import kmeans


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def contingency(truth, pred) -> np.ndarray:
    """counts[c, k] = images of class c in cluster k (rows: classes present, columns: clusters present)."""
    _, t = np.unique(_numpy(truth), return_inverse=True)
    _, p = np.unique(_numpy(pred), return_inverse=True)
    counts = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def hungarian_accuracy(truth, pred) -> float:
    """Fraction of images whose cluster maps to their class under the best one-to-one mapping."""
    counts = contingency(truth, pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def cluster_scores(truth, pred) -> dict[str, float]:
    """The clustering metrics of one split, named as they are logged (`{stage}/<name>`)."""
    truth, pred = _numpy(truth), _numpy(pred)
    return {"cluster_acc": hungarian_accuracy(truth, pred),
            "nmi": float(normalized_mutual_info_score(truth, pred)),
            "ari": float(adjusted_rand_score(truth, pred))}


@torch.no_grad()
def k_selection(features: torch.Tensor, ks, seed: int = 0, n_init: int = 3,
                silhouette_sample: int = 4000) -> list[dict[str, float]]:
    """For each k: the mean silhouette (higher is better; on a seeded sample of at most
    `silhouette_sample` points, as it is quadratic) and the k-means objective with its relative drop
    from the previous k (the "elbow": where adding a cluster stops paying)."""
    x = features.detach().float().cpu()
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), size=min(len(x), silhouette_sample), replace=False)
    rows, previous = [], None
    for k in sorted(int(k) for k in ks):
        result = kmeans(x, k, seed=seed, n_init=n_init)
        labels = result.assignments.numpy()
        silhouette = float(silhouette_score(x[sample].numpy(), labels[sample])) if k > 1 else float("nan")
        drop = float("nan") if previous is None else 1.0 - result.inertia / previous
        rows.append({"k": k, "silhouette": silhouette, "objective": result.inertia, "objective_drop": drop})
        previous = result.inertia
    return rows
