"""k-means with k-means++ seeding, in torch (any device), with faiss used when it is installed.

DeepCluster (Caron et al. 2018, Sec. 3.2) clusters the whole training set every epoch and needs two
things a textbook k-means lacks:
- *empty clusters are split*, never left empty (Sec. 3.3, "Empty clusters"): an empty cluster takes
  over part of a non-empty cluster chosen at random with probability proportional to its size;
- under DDP, the features of *all* processes are clustered once (on rank 0) and the assignments
  broadcast, so every process trains on the same pseudo-labels (`distributed_kmeans`).

Randomness comes from one CPU `torch.Generator` seeded by `seed`, so the same features and seed give
the same clustering on CPU and GPU alike (up to floating-point ties).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.distributed as dist

from datamodules.errors import ConfigError

from .distributed import dist_ready, gather_rows

BACKENDS = ("auto", "torch", "faiss")


@dataclass
class KMeansResult:
    assignments: torch.Tensor  # (N,) int64 cluster of each point
    centroids: torch.Tensor  # (k, D)
    inertia: float  # sum of squared distances to the assigned centroid
    n_iter: int


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 for every pair, (N, k), as ||x||^2 - 2 x.c + ||c||^2 (clamped at 0)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return d.clamp_min_(0.0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point and its squared distance, in chunks to bound memory."""
    labels, dists = [], []
    for start in range(0, len(x), chunk):
        d = squared_distances(x[start : start + chunk], centroids)
        dist_min, idx = d.min(1)
        labels.append(idx)
        dists.append(dist_min)
    return torch.cat(labels), torch.cat(dists)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is drawn with probability
    proportional to D(x)^2, the squared distance to the nearest centre chosen so far."""
    n = len(x)
    first = int(torch.randint(n, (), generator=generator))
    centres = [x[first]]
    closest = squared_distances(x, x[first][None])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: any point will do, the split below fixes it
            nxt = int(torch.randint(n, (), generator=generator))
        else:
            cdf = torch.cumsum(closest.double(), 0) / total
            nxt = min(int(torch.searchsorted(cdf, torch.tensor([_uniform(generator)], dtype=cdf.dtype, device=cdf.device))), n - 1)
        centres.append(x[nxt])
        closest = torch.minimum(closest, squared_distances(x, x[nxt][None])[:, 0])
    return torch.stack(centres)


def update_centroids(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's points; an empty cluster keeps its old centre (it is split afterwards)."""
    k = len(centroids)
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    new = sums / counts.clamp_min(1)[:, None]
    return torch.where(counts[:, None] > 0, new, centroids)


def split_empty_clusters(
    x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Give every empty cluster half of a non-empty one (DeepCluster, Sec. 3.3).

    The donor cluster is drawn with probability proportional to (size - 1) among clusters with at
    least two points; its points are divided along a random direction at the median projection, and
    both halves get their mean as centre. Returns (labels, centroids, number of clusters split).
    Needs at least as many points as clusters.
    """
    k = len(centroids)
    if len(x) < k:
        raise ConfigError(f"k-means: {len(x)} points cannot fill k={k} clusters; lower the number of clusters")
    labels, centroids = labels.clone(), centroids.clone()
    counts = torch.bincount(labels, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    for e in empty:
        weights = (counts - 1).clamp_min(0).double().cpu()
        donor = int(torch.multinomial(weights, 1, generator=generator))
        members = torch.nonzero(labels == donor).flatten()
        direction = torch.randn(x.shape[1], generator=generator, dtype=torch.float64).to(x)
        projection = (x[members] - centroids[donor]) @ direction
        order = torch.argsort(projection)
        moved = members[order[len(members) // 2 :]]  # the upper half moves to the empty cluster
        labels[moved] = e
        stay = members[order[: len(members) // 2]]
        centroids[e], centroids[donor] = x[moved].mean(0), x[stay].mean(0)
        counts[e], counts[donor] = len(moved), len(stay)
    return labels, centroids, len(empty)


def _faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _faiss_centroids(x: torch.Tensor, k: int, n_iter: int, seed: int) -> torch.Tensor:
    import faiss  # optional: pip install faiss-cpu (or faiss-gpu)

    data = x.detach().float().cpu().contiguous().numpy()
    km = faiss.Kmeans(data.shape[1], k, niter=n_iter, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=10**9, gpu=x.is_cuda and hasattr(faiss, "StandardGpuResources"))
    km.train(data)
    return torch.from_numpy(km.centroids).to(x)


def kmeans(
    x: torch.Tensor,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    n_init: int = 1,
    tol: float = 1e-6,
    init: torch.Tensor | None = None,
    backend: str = "torch",
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding (or the given `init` centres); empty clusters are split
    after every assignment step, so the result has k non-empty clusters. `n_init` restarts keep the
    lowest inertia. `backend`: "torch" (any device), "faiss" (needs faiss), "auto" (faiss if installed).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"k-means backend={backend!r}; choices: {list(BACKENDS)}")
    if n_iter < 1:
        raise ConfigError(f"k-means n_iter={n_iter} must be >= 1")
    if k < 1 or len(x) < k:
        raise ConfigError(f"k-means needs 1 <= k <= number of points; got k={k} for {len(x)} points")
    x = x.detach().float()
    generator = torch.Generator().manual_seed(seed)
    use_faiss = backend == "faiss" or (backend == "auto" and _faiss_available() and init is None)
    if backend == "faiss" and not _faiss_available():
        raise ConfigError("k-means backend='faiss' but faiss is not installed (pip install faiss-cpu); use 'torch' or 'auto'")
    best: KMeansResult | None = None
    for restart in range(max(1, n_init)):
        if use_faiss:
            centroids, iters = _faiss_centroids(x, k, n_iter, seed + restart), n_iter
        else:
            centroids = init.to(x).clone() if init is not None else kmeans_plusplus(x, k, generator)
            previous = None
            for iters in range(1, n_iter + 1):
                labels, _ = assign(x, centroids)
                labels, centroids, _ = split_empty_clusters(x, labels, centroids, generator)
                centroids = update_centroids(x, labels, centroids)
                # converged when at most a fraction `tol` of the points changed cluster
                if previous is not None and float((labels != previous).float().mean()) <= tol:
                    break
                previous = labels
        labels, _ = assign(x, centroids)
        labels, centroids, _ = split_empty_clusters(x, labels, centroids, generator)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels, centroids, inertia, iters)
    return best


# ------------------------------------------------------------------------------------------------
# DDP: gather everything, cluster once on rank 0, broadcast


def distributed_kmeans(x_local: torch.Tensor, k: int, gathered: bool = False, **kwargs) -> KMeansResult:
    """k-means of the rows of all processes together: gathered, clustered once on rank 0, and the
    result broadcast. Every process gets the assignments of *all* rows (rank order) and the centroids.
    `gathered=True`: every process already holds all rows (e.g. from `gather_rows`); only rank 0's
    copy is clustered. Without an initialised process group this is `kmeans(x_local, k)`."""
    if not dist_ready():
        return kmeans(x_local, k, **kwargs)
    x = x_local.detach().float() if gathered else gather_rows(x_local.detach().float())
    assignments = torch.empty(len(x), dtype=torch.long, device=x.device)
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    stats = torch.zeros(2, dtype=torch.float64, device=x.device)
    if dist.get_rank() == 0:
        result = kmeans(x, k, **kwargs)
        assignments.copy_(result.assignments)
        centroids.copy_(result.centroids)
        stats[0], stats[1] = result.inertia, result.n_iter
    for tensor in (assignments, centroids, stats):
        dist.broadcast(tensor, src=0)
    return KMeansResult(assignments, centroids, float(stats[0]), int(stats[1]))
