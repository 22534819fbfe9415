"""k-means (components/kmeans.py) and PCA-whitening (components/pca.py)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import adjusted_rand_score

from datamodules.errors import ConfigError
from lightning_modules.components.kmeans import (
    distributed_kmeans, kmeans, kmeans_plusplus, split_empty_clusters,
)
from lightning_modules.components.pca import pca_whiten, preprocess_features


def blobs(n_per: int = 50, k: int = 5, dim: int = 8, spread: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def test_recovers_well_separated_blobs_exactly():
    x, y = blobs()
    result = kmeans(x, 5, seed=0)
    assert adjusted_rand_score(y.numpy(), result.assignments.numpy()) == 1.0
    # each centroid is its cluster's mean
    for c in range(5):
        assert torch.allclose(result.centroids[c], x[result.assignments == c].mean(0), atol=1e-4)


def test_same_seed_same_clustering_and_plusplus_picks_distinct_blobs():
    x, y = blobs(k=6, seed=3)
    a, b = kmeans(x, 6, seed=7), kmeans(x, 6, seed=7)
    assert torch.equal(a.assignments, b.assignments)
    centres = kmeans_plusplus(x, 6, torch.Generator().manual_seed(1))
    nearest_true = [int(y[torch.cdist(c[None], x).argmin()]) for c in centres]
    assert len(set(nearest_true)) == 6  # D^2 seeding lands one centre in every far-apart blob


def test_empty_cluster_is_split_not_left_empty():
    x, _ = blobs(n_per=40, k=3)
    far = torch.full((1, x.shape[1]), 1e4)
    init = torch.cat([x[:2], far])  # the third centre attracts no point
    result = kmeans(x, 3, init=init, n_iter=1)
    assert torch.bincount(result.assignments, minlength=3).min() > 0
    # and the splitting step alone: one empty cluster takes half of a donor's points
    labels = torch.zeros(len(x), dtype=torch.long)
    centroids = torch.stack([x.mean(0), far[0], far[0] + 1])
    new_labels, new_centroids, n_split = split_empty_clusters(x, labels, centroids, torch.Generator().manual_seed(0))
    counts = torch.bincount(new_labels, minlength=3)
    assert n_split == 2 and counts.min() > 0 and counts.sum() == len(x)
    for c in range(3):
        assert torch.allclose(new_centroids[c], x[new_labels == c].mean(0), atol=1e-4)


def test_bad_k_is_a_clear_error():
    with pytest.raises(ConfigError, match="k="):
        kmeans(torch.randn(3, 2), 5)
    with pytest.raises(ConfigError, match="backend"):
        kmeans(torch.randn(10, 2), 2, backend="sklearn")


def test_pca_whitening_gives_identity_covariance_and_unit_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3
    z = pca_whiten(x, 6)
    cov = torch.cov(z.T.double())
    assert z.shape == (500, 6) and torch.allclose(cov, torch.eye(6, dtype=cov.dtype), atol=1e-3)
    assert pca_whiten(x, 256).shape[1] == 12  # capped by the feature size
    assert torch.allclose(preprocess_features(x, 6).norm(dim=1), torch.ones(500), atol=1e-5)


def _worker(rank: int, world: int, init_file: str, x: torch.Tensor, out: dict):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    shard = x[: len(x) // 2 + 7] if rank == 0 else x[len(x) // 2 + 7 :]  # unequal shards on purpose
    result = distributed_kmeans(shard, 4, seed=3)
    out[rank] = (result.assignments.clone(), result.centroids.clone())
    dist.destroy_process_group()


def test_two_process_gloo_equals_one_process_on_all_features():
    x, _ = blobs(n_per=30, k=4, spread=2.0, seed=5)  # overlapping blobs: the result depends on every row
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), x, out), nprocs=2, join=True)
        single = kmeans(x, 4, seed=3)
        for rank in (0, 1):
            assignments, centroids = out[rank]
            assert torch.equal(assignments, single.assignments)
            assert torch.allclose(centroids, single.centroids)
