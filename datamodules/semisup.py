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

`mu` (FixMatch's ratio of unlabeled to labeled batch size): the unlabeled batch is mu x batch_size;
give it or `unlabeled_batch_size`, not both. `missing_classes` (e.g. [7]): those classes get no labeled
example (the class-balanced draw is made as usual and their share moves to the unlabeled part), the
seed's failure case of a class present only among the unlabeled images.
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
                 unlabeled_batch_size: int | None = None, unlabeled_eval: bool = True, mu: float | None = None,
                 missing_classes: list[int] | None = None, **loader_options):
        super().__init__(**loader_options)
        if mu is not None and unlabeled_batch_size is not None:
            raise ConfigError(f"data.mu={mu} and data.unlabeled_batch_size={unlabeled_batch_size}: give one "
                              f"(mu sets the unlabeled batch to mu x data.batch_size); set the other to null")
        if mu is not None and mu <= 0:
            raise ConfigError(f"data.mu={mu} must be > 0 (unlabeled batch = mu x data.batch_size)")
        self.missing_classes = sorted(int(c) for c in (missing_classes or []))
        self.unlabeled_eval = bool(unlabeled_eval)
        self.dataset_spec = dict(dataset)
        self.num_labels, self.label_seed = int(num_labels), int(label_seed)
        self.unlabeled_batch_size = (max(1, round(mu * self.batch_size)) if mu is not None
                                     else unlabeled_batch_size or self.batch_size)
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
        self.labeled_idx = self.without_missing_classes(
            class_balanced_subset(labels, self.num_labels, self.label_seed), labels, n_classes)
        self.unlabeled_idx = np.setdiff1d(np.arange(len(labels)), self.labeled_idx)
        self.labeled = train.subset(self.labeled_idx)
        self.unlabeled = train.subset(self.unlabeled_idx)  # keeps its labels, only for evaluation

    def without_missing_classes(self, labeled_idx: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """`labeled_idx` less the examples of `data.missing_classes` (checked against the dataset's classes)."""
        if not self.missing_classes:
            return labeled_idx
        names = list(getattr(self.splits, "classes", None) or range(n_classes))
        bad = [c for c in self.missing_classes if not 0 <= c < n_classes]
        if bad:
            raise ConfigError(f"data.missing_classes={self.missing_classes}: {bad} not a class of this dataset; "
                              f"class indices are 0..{n_classes - 1} ({', '.join(map(str, names))})")
        if len(self.missing_classes) >= n_classes:
            raise ConfigError(f"data.missing_classes={self.missing_classes} leaves no labeled class")
        return labeled_idx[~np.isin(labels[labeled_idx], self.missing_classes)]

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
