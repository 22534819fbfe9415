"""Unlabeled training batches `(x, index)` from one named dataset: what source-free adaptation sees.

The training split's labels never leave this module: a training batch holds the images and their
positions in the split (methods with a memory bank, e.g. AaD, update it by position). Validation and
test batches are `(x, y)`, for evaluation only. The data is the *target* domain alone; there is no
option for a source dataset, so a run cannot read one.
"""
from __future__ import annotations

from torch.utils.data import DataLoader, Subset

from .datasets import ItemView
from .labeled import LabeledDataModule


class PositionsNotLabels(ItemView):
    """Items `(image, position in the split)`: the label of each `(image, label)` is dropped."""

    def item(self, original, i):
        return original[0], i


class UnlabeledDataModule(LabeledDataModule):
    labels_needed = False  # labels only evaluate (a class missing from the training split is a warning)

    def train_dataloader(self):
        return self.loader(PositionsNotLabels(self.splits.train), train=True, steps=self.steps_per_epoch)

    def unlabeled_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The training images in order as `(x, position)`, this process's share (every world_size-th from
        `rank`): for a method's passes over the whole target set (centroids, memory banks)."""
        shard = Subset(PositionsNotLabels(self.splits.train), range(rank, len(self.splits.train), world_size))
        return self.eval_loader(shard)
