"""Multi-view batches for self-supervised learning: `([v1, v2, ...], y)`.

Training batches hold `n_views` independent random views of every image (see `augment.py`) and
the labels, which only the online evaluators may read. Evaluation loaders hold clean images:
`val_dataloader()` / `test_dataloader()` return `[eval split, train bank]` of `(x, y)`
(dataloader_idx 0 = the split that is scored, 1 = the un-augmented training images that the
kNN classifier votes with). With `val_fraction: 0` there is no validation loop.

Augmentation backends (`augment.backend`):
- `batched`: the loader yields uint8 images; `on_after_batch_transfer` makes the views on the
  device, one parameter draw per image (needs an in-memory dataset).
- `per_sample`: every item is augmented in the DataLoader with torchvision transforms v2.
- `auto` (default): `batched` when the training split is held in memory, else `per_sample`.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .augment import AugmentSpec, ViewAugmenter
from .datasets import TensorImageDataset
from .errors import ConfigError
from .labeled import LabeledDataModule


class RawImages(Dataset):
    """uint8 images and labels of an in-memory split, for augmentation on the device."""

    def __init__(self, dataset: TensorImageDataset):
        self.images, self.labels = dataset.images, dataset.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch in one gather (the same items as `[self[i] for i in indices]`)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.images[idx].unbind(0), self.labels[idx].unbind(0)))


class ViewsDataset(Dataset):
    """`n_views` random views of each item of a `(x in [-1, 1], y)` dataset, per sample."""

    def __init__(self, dataset: Dataset, augmenter: ViewAugmenter, n_views: int):
        self.dataset, self.augmenter, self.n_views = dataset, augmenter, n_views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return [self.augmenter(x) for _ in range(self.n_views)], y


class MultiViewDataModule(LabeledDataModule):
    labels_needed = False  # self-supervised: labels only feed the kNN / linear-probe evaluation
    def __init__(self, dataset: dict, n_views: int = 2, augment: dict | None = None,
                 knn_bank_size: int | None = None, **loader_options):
        super().__init__(dataset, **loader_options)
        if n_views < 1:
            raise ConfigError(f"data.n_views={n_views} must be >= 1")
        self.n_views = n_views
        self.spec = AugmentSpec.from_config(augment)
        self.knn_bank_size = knn_bank_size
        self.backend: str | None = None
        self.augmenter: ViewAugmenter | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.augmenter is not None:
            return
        in_memory = isinstance(self.splits.train, TensorImageDataset)
        backend = self.spec.backend
        if backend == "auto":
            backend = "batched" if in_memory else "per_sample"
        if backend == "batched" and not in_memory:
            raise ConfigError(
                f"augment.backend=batched needs a dataset held in memory, but '{self.splits.name}' is read "
                f"from files; use augment.backend=per_sample or auto"
            )
        channels, height, _ = self.splits.shape
        self.backend = backend
        self.augmenter = ViewAugmenter(self.spec, image_size=height, channels=channels)

    # ---- loaders ---------------------------------------------------------------------------
    def train_dataloader(self):
        train = self.splits.train
        dataset = RawImages(train) if self.backend == "batched" else ViewsDataset(train, self.augmenter, self.n_views)
        return self.loader(dataset, train=True)

    def bank(self) -> Dataset:
        train = self.splits.train
        if self.knn_bank_size is None or self.knn_bank_size >= len(train):
            return train
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))[: self.knn_bank_size]
        return train.subset(keep.sort().values.numpy())

    def _eval_loaders(self, split):
        if len(split) == 0:
            return []
        return [self.loader(split, train=False), self.loader(self.bank(), train=False)]

    def val_dataloader(self):
        return self._eval_loaders(self.splits.val)

    def test_dataloader(self):
        return self._eval_loaders(self.splits.test)

    # ---- views on the device ---------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Batched backend: a training batch arrives as uint8 `(x, y)` and leaves as `([v1, ...], y)`."""
        x, y = batch
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8):
            return batch
        generator = self.device_generator(x.device)
        return [self.augmenter.batch(x, generator) for _ in range(self.n_views)], y
