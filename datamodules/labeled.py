"""Labeled batches `(x, y)` from one named dataset."""
from __future__ import annotations

from .base import BaseDataModule
from .registry import Splits, load_dataset


class LabeledDataModule(BaseDataModule):
    def __init__(self, dataset: dict, **loader_options):
        super().__init__(**loader_options)
        self.dataset_spec = dict(dataset)
        self.splits: Splits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = load_dataset(self.dataset_spec, **self.split_options())

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
