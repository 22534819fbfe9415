"""Batches for clustering-based self-supervision (DeepCluster): `([view], y, index)`.

The training loader draws images *uniformly over the current clusters* (Caron et al. 2018, Sec. 3.3
"Trivial parametrization"): `ClusterBalancedSampler` reads the assignments the module last set with
`set_assignments` every time an epoch's iteration starts, so it is rebuilt each epoch. The dataset
index of every image comes with the batch, for the module to look its pseudo-label up; the label
`y` is read only by the online linear probe. `cluster_dataloader()` yields the training images
without augmentation, in order, for feature extraction (one shard per process under DDP).
Evaluation loaders are those of `MultiViewDataModule`: `[scored split, kNN bank]`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .datasets import ItemView
from .multiview import MultiViewDataModule, RawImages, ViewsDataset


class WithIndex(ItemView):
    """Appends the dataset index to each item: `(*item, i)`."""

    def item(self, original, i):
        return (*original, i)


class ClusterBalancedSampler(Sampler):
    """N indices per epoch, the same number drawn from every non-empty cluster (with replacement when
    a cluster is smaller than its share), shuffled (DeepCluster's UnifLabelSampler). Before any
    assignment exists it is a plain random permutation. Seeded by (seed, assignment version), so all
    DDP processes draw the same order and Lightning's distributed wrapper shards it."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed = size, seed
        self.assignments: np.ndarray | None = None
        self.version = 0

    def set_assignments(self, assignments) -> None:
        assignments = np.asarray(assignments)
        if len(assignments) != self.size:
            raise ValueError(f"{len(assignments)} assignments for a training set of {self.size} images")
        self.assignments, self.version = assignments, self.version + 1

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.version])
        if self.assignments is None:
            return rng.permutation(self.size)
        clusters = [np.flatnonzero(self.assignments == c) for c in np.unique(self.assignments)]
        per_cluster = self.size // len(clusters) + 1
        drawn = [rng.choice(members, per_cluster, replace=len(members) < per_cluster) for members in clusters]
        return rng.permutation(np.concatenate(drawn))[: self.size]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.size


class ClusteringDataModule(MultiViewDataModule):
    def __init__(self, dataset: dict, augment: dict | None = None, knn_bank_size: int | None = None, **loader_options):
        super().__init__(dataset, n_views=1, augment=augment, knn_bank_size=knn_bank_size, **loader_options)
        self.sampler: ClusterBalancedSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.sampler is None:
            self.sampler = ClusterBalancedSampler(len(self.splits.train), seed=self.split_seed)

    def set_assignments(self, assignments) -> None:
        self.sampler.set_assignments(assignments)

    def train_dataloader(self):
        train = self.splits.train
        dataset = RawImages(train) if self.backend == "batched" else ViewsDataset(train, self.augmenter, 1)
        return DataLoader(WithIndex(dataset), batch_size=self.batch_size, sampler=self.sampler,
                          drop_last=len(train) > self.batch_size, pin_memory=self.pin_memory,
                          **self.worker_options(train))

    def cluster_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Clean training images `(x, y)` of the indices rank, rank + world_size, ... in order."""
        shard = torch.utils.data.Subset(self.splits.train, range(rank, len(self.splits.train), world_size))
        return self.loader(shard, train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches `(uint8 x | [view], y, index)` leave as `([view], y, index)`; the view is
        drawn with the per-rank `device_generator`, as in `MultiViewDataModule`."""
        if isinstance(batch, (list, tuple)) and len(batch) == 3:
            x, y, index = batch
            if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
                x = [self.augmenter.batch(x, self.device_generator(x.device))]
            return x, y, index
        return batch
