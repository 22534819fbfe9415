"""Semi-supervised batches `{"labeled": (x, y), "unlabeled": x}` from one named dataset.

The training split is divided, class-balanced and seeded (`label_seed`), into `num_labels` labeled
examples and the rest, whose labels are hidden: the unlabeled training loader yields images only
(`ImagesOnly`), so their true labels cannot reach a loss. They are kept in `unlabeled_labels` for
one purpose: measuring how accurate the pseudo-labels are, through the evaluation loader
`unlabeled_eval_dataloader()` (which the module runs as validation loader 0).

An epoch is one pass over the unlabeled part; the labeled part is cycled (CombinedLoader
"max_size_cycle"), each with its own batch size. Validation loaders: [unlabeled with its hidden
labels, val] (the val split is left out when it is empty, e.g. `val_fraction: 0`; the unlabeled one
with `unlabeled_eval: false`, for methods that do not score pseudo-labels, e.g. distillation).
"""
from __future__ import annotations

import numpy as np
from pytorch_lightning.utilities import CombinedLoader

from .base import BaseDataModule
from .errors import ConfigError
from .pair import ImagesOnly
from .registry import Splits, load_dataset
from .splits import class_balanced_subset


class SemiSupervisedDataModule(BaseDataModule):
    def __init__(self, dataset: dict, num_labels: int = 100, label_seed: int = 0,
                 unlabeled_batch_size: int | None = None, unlabeled_eval: bool = True, **loader_options):
        super().__init__(**loader_options)
        self.unlabeled_eval = bool(unlabeled_eval)
        self.dataset_spec = dict(dataset)
        self.num_labels, self.label_seed = int(num_labels), int(label_seed)
        self.unlabeled_batch_size = unlabeled_batch_size or self.batch_size
        self.splits: Splits | None = None
        self.labeled = self.unlabeled = None
        self.labeled_idx = self.unlabeled_idx = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.splits = load_dataset(self.dataset_spec, **self.split_options())
        train = self.splits.train
        labels = np.asarray(train.labels)
        n_classes = self.splits.num_classes
        if not n_classes <= self.num_labels < len(labels):
            raise ConfigError(
                f"data.num_labels={self.num_labels} must be at least the number of classes ({n_classes}) and "
                f"below the training set size ({len(labels)})"
            )
        self.labeled_idx = class_balanced_subset(labels, self.num_labels, self.label_seed)
        self.unlabeled_idx = np.setdiff1d(np.arange(len(labels)), self.labeled_idx)
        self.labeled = train.subset(self.labeled_idx)
        self.unlabeled = train.subset(self.unlabeled_idx)  # keeps its labels, only for evaluation

    @property
    def unlabeled_labels(self):
        """The hidden true labels of the unlabeled part (evaluation only)."""
        return self.unlabeled.labels

    @property
    def data_info(self) -> dict:
        channels, height, _ = self.splits.shape
        return {"num_classes": self.splits.num_classes, "in_chans": channels, "image_size": height}

    def train_dataloader(self):
        loaders = {
            "labeled": self.loader(self.labeled, train=True, batch_size=min(self.batch_size, len(self.labeled))),
            "unlabeled": self.loader(ImagesOnly(self.unlabeled), train=True, batch_size=self.unlabeled_batch_size),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def unlabeled_eval_dataloader(self):
        return self.loader(self.unlabeled, train=False)

    def val_dataloader(self):
        loaders = [self.unlabeled_eval_dataloader()] if self.unlabeled_eval else []
        if len(self.splits.val):
            loaders.append(self.loader(self.splits.val, train=False))
        return loaders

    def test_dataloader(self):
        return self.loader(self.splits.test, train=False)
