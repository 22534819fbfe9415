"""Labeled batches `(x, y)` from one named dataset.

`num_labels` (null = all) keeps a class-balanced subset of the train split, drawn with `label_seed`
(`datamodules.splits.class_balanced_subset`): the few-label budgets of transfer benchmarks. Val and
test splits are untouched. `train_augment` (null = off, handled by `BaseDataModule`) gives training
images a random affine transform on the device (`datamodules.train_augment.AffineAugment`).
"""
from __future__ import annotations

import numpy as np

from .base import BaseDataModule
from .errors import ConfigError
from .registry import Splits, load_dataset
from .splits import class_balanced_subset


class LabeledDataModule(BaseDataModule):
    def __init__(self, dataset: dict, num_labels: int | None = None, label_seed: int = 0, **loader_options):
        super().__init__(**loader_options)
        self.dataset_spec = dict(dataset)
        self.num_labels, self.label_seed = num_labels, int(label_seed)
        self.splits: Splits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = load_dataset(self.dataset_spec, **self.split_options())
            if self.num_labels is not None:
                self.splits.train = self._labeled_subset(self.splits.train)

    def _labeled_subset(self, train):
        labels = np.asarray(train.labels)
        if not self.splits.num_classes <= int(self.num_labels) <= len(labels):
            raise ConfigError(
                f"data.num_labels={self.num_labels} must lie between the number of classes "
                f"({self.splits.num_classes}) and the training set size ({len(labels)}), or be null (all)"
            )
        return train.subset(class_balanced_subset(labels, int(self.num_labels), self.label_seed))

    @property
    def data_info(self) -> dict:
        channels, height, _ = self.splits.shape
        return {"num_classes": self.splits.num_classes, "in_chans": channels, "image_size": height}

    def train_dataloader(self):
        return self.loader(self.splits.train, train=True)

    def val_dataloader(self):
        return self.loader(self.splits.val, train=False)

    def test_dataloader(self):
        return self.loader(self.splits.test, train=False)
