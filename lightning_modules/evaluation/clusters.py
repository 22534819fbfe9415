"""Pictures of a clustering, for every clustering method: sizes, images per cluster, fuzzy memberships,
and the choice of k. Each returns a matplotlib figure or an image tensor for `evaluation.images.log_image`.
"""
from __future__ import annotations

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cluster_sizes_figure(sizes: np.ndarray, title: str):
    """Bar chart of the cluster sizes, largest first (a collapsed clustering shows at a glance)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(np.arange(len(sizes)), np.sort(np.asarray(sizes))[::-1], width=1.0)
    ax.set_xlabel("cluster (sorted by size)"), ax.set_ylabel("images")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cluster_grid(images: torch.Tensor, assignments: torch.Tensor, per_cluster: int = 10,
                 max_clusters: int = 31, scores: torch.Tensor | None = None) -> torch.Tensor:
    """One row per cluster (largest first): up to `per_cluster` of its images, the most confident first
    when `scores` (e.g. the membership of each image in its cluster) is given. Images in [-1, 1]."""
    from torchvision.utils import make_grid

    assignments = torch.as_tensor(assignments).cpu()
    order = torch.bincount(assignments).argsort(descending=True)[:max_clusters]
    blank = torch.ones_like(images[0])
    tiles = []
    for cluster in order.tolist():
        members = (assignments == cluster).nonzero().flatten()
        if scores is not None:
            members = members[torch.as_tensor(scores).cpu()[members].argsort(descending=True)]
        row = [images[i].cpu() for i in members[:per_cluster].tolist()]
        tiles += row + [blank] * (per_cluster - len(row))
    return make_grid(torch.stack(tiles), nrow=per_cluster, padding=1, pad_value=1.0)


def memberships_figure(memberships: np.ndarray, truth: np.ndarray, points_2d: np.ndarray, title: str):
    """Fuzzy memberships: (left) the 2-D projection coloured by cluster, faded where the largest
    membership is low (the boundary images); (right) the histogram of the largest membership."""
    plt = _pyplot()
    top = memberships.max(1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.get_cmap("tab20" if memberships.shape[1] > 10 else "tab10")(memberships.argmax(1) % 20)
    colours[:, 3] = np.clip(0.15 + 0.85 * (top - top.min()) / max(float(np.ptp(top)), 1e-9), 0.0, 1.0)
    left.scatter(points_2d[:, 0], points_2d[:, 1], s=6, c=colours, linewidths=0)
    left.set_title("clusters (faded: low largest membership)"), left.set_xticks([]), left.set_yticks([])
    right.hist(top, bins=40, color="tab:blue")
    right.axvline(1.0 / memberships.shape[1], color="grey", ls="--", label="1 / clusters (no preference)")
    right.set_xlabel("largest membership of an image"), right.set_ylabel("images"), right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def k_selection_figure(rows: list[dict[str, float]], chosen: int | None = None):
    """Silhouette and k-means objective over k."""
    plt = _pyplot()
    ks = [r["k"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(ks, [r["silhouette"] for r in rows], "o-"), a.set_xlabel("k"), a.set_ylabel("mean silhouette")
    b.plot(ks, [r["objective"] for r in rows], "o-"), b.set_xlabel("k"), b.set_ylabel("k-means objective")
    if chosen is not None:
        for ax in (a, b):
            ax.axvline(chosen, color="grey", ls="--", label=f"k = {chosen}")
        a.legend()
    fig.suptitle("choosing k: a silhouette peak, and where the objective stops falling fast")
    fig.tight_layout()
    return fig


def grid_indices(assignments: torch.Tensor, scores: torch.Tensor | None, per_cluster: int) -> torch.Tensor:
    """Per cluster, the first `per_cluster` images (the highest `scores` first when given)."""
    picks = []
    for cluster in torch.unique(assignments).tolist():
        members = (assignments == cluster).nonzero().flatten()
        if scores is not None:
            members = members[scores[members].argsort(descending=True)]
        picks.append(members[:per_cluster])
    return torch.cat(picks)


def log_cluster_pictures(module, assignments: torch.Tensor, num_clusters: int, scores: torch.Tensor | None = None,
                         per_cluster: int = 10) -> None:
    """The cluster-size chart and the per-cluster image grid of the test split, for any clustering method.
    `assignments` are in the test split's order (one process), `scores` each image's confidence."""
    from .images import log_image

    assignments = assignments.cpu()
    sizes = torch.bincount(assignments, minlength=num_clusters).numpy()
    log_image(module, "cluster_sizes", cluster_sizes_figure(sizes, f"test clusters (k={num_clusters})"))
    if module.trainer.world_size != 1:  # gathered rows are in rank order, not the split's
        return
    images = module.trainer.datamodule.split("test")
    scores = None if scores is None else scores.cpu()
    picks = grid_indices(assignments, scores, per_cluster)
    tiles = torch.stack([images[i][0] for i in picks.tolist()])
    log_image(module, "clusters", cluster_grid(tiles, assignments[picks], per_cluster,
                                               scores=None if scores is None else scores[picks]))
