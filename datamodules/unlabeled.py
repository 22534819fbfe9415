"""Unlabeled training batches `(x, index)` from one named dataset: what source-free adaptation sees.

The training split's labels never leave this module: a training batch holds the images and their
positions in the split (methods with a memory bank, e.g. AaD, update it by position). Validation and
test batches are `(x, y)`, for evaluation only. The data is the *target* domain alone; there is no
option for a source dataset, so a run cannot read one.
"""
from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, Subset

from .datasets import fetch_items
from .labeled import LabeledDataModule


class PositionsNotLabels(Dataset):
    """Items `(image, position in the split)`: the label of each `(image, label)` is dropped."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0], i

    def __getitems__(self, indices: list[int]) -> list:
        return [(x, i) for (x, _), i in zip(fetch_items(self.dataset, indices), indices)]


class UnlabeledDataModule(LabeledDataModule):
    labels_needed = False  # labels only evaluate (a class missing from the training split is a warning)

    def train_dataloader(self):
        return self.loader(PositionsNotLabels(self.splits.train), train=True, steps=self.steps_per_epoch)

    def unlabeled_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The training images in order as `(x, position)`, this process's share (every world_size-th from
        `rank`): for a method's passes over the whole target set (centroids, memory banks)."""
        shard = Subset(PositionsNotLabels(self.splits.train), range(rank, len(self.splits.train), world_size))
        return self.eval_loader(shard)
