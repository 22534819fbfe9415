"""Labeled batches `(x, y)` from one named dataset.

`num_labels` (null = all) keeps a class-balanced subset of the train split, drawn with `label_seed`
(`datamodules.splits.class_balanced_subset`): the few-label budgets of transfer benchmarks;
`labels_per_class` = k is the same with k x the number of classes. `steps_per_epoch` (null = one pass)
makes a training epoch that many batches whatever the number of labels, so a budget in epochs means the
same number of steps at 10 labels as at all of them. Val and
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
    def __init__(self, dataset: dict, num_labels: int | None = None, label_seed: int = 0,
                 labels_per_class: int | None = None, steps_per_epoch: int | None = None, **loader_options):
        super().__init__(**loader_options)
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch={steps_per_epoch} must be >= 1 (or null: one pass over the labels)")
        self.steps_per_epoch = steps_per_epoch
        if num_labels is not None and labels_per_class is not None:
            raise ConfigError(f"data.num_labels={num_labels} and data.labels_per_class={labels_per_class}: "
                              f"give one of the two (the other null)")
        if labels_per_class is not None and (isinstance(labels_per_class, bool) or not isinstance(labels_per_class, int)
                                             or labels_per_class < 1):
            raise ConfigError(f"data.labels_per_class={labels_per_class!r} must be an integer >= 1 (or null: all)")
        self.dataset_spec = dict(dataset)
        self.labels_per_class = labels_per_class
        self.num_labels, self.label_seed = num_labels, int(label_seed)
        self.splits: Splits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = load_dataset(self.dataset_spec, **self.split_options())
            if self.labels_per_class is not None:
                self.num_labels = self.labels_per_class * self.splits.num_classes
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
        return self.loader(self.splits.train, train=True, steps=self.steps_per_epoch)

    def val_dataloader(self):
        return self.loader(self.splits.val, train=False)

    def test_dataloader(self):
        return self.loader(self.splits.test, train=False)
