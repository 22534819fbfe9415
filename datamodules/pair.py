"""Domain pairs: labeled source `(xs, ys)` and unlabeled target `xt` with the same classes.

Training batches are `{"source": (xs, ys), "target": xt}`; the target's labels never reach a
training batch. They are used only by the evaluation loaders: `val_dataloader` and
`test_dataloader` return `[target, source]` loaders of `(x, y)` (dataloader_idx 0 = target).
"""
from __future__ import annotations

from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import Dataset

from .base import BaseDataModule
from .errors import DataFormatError
from .registry import Splits, load_dataset


class ImagesOnly(Dataset):
    """Hides labels: yields only the image of each `(image, label)`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def check_pair(source: Splits, target: Splits, channels: int | None, image_size: int | None) -> None:
    """Both domains must share the class list and, unless converted, the image shape."""
    names = f"source '{source.name}' and target '{target.name}'"
    if source.num_classes != target.num_classes or source.classes != target.classes:
        raise DataFormatError(
            f"{names} have different classes: {source.num_classes} {source.classes[:12]} vs "
            f"{target.num_classes} {target.classes[:12]}; domain adaptation needs the same classes"
        )
    if source.shape[0] != target.shape[0]:
        raise DataFormatError(
            f"{names} have {source.shape[0]} vs {target.shape[0]} channels; set data.channels=1 or "
            f"data.channels=3 to convert both (now data.channels={channels})"
        )
    if source.shape[1:] != target.shape[1:]:
        raise DataFormatError(
            f"{names} have image sizes {source.shape[1:]} vs {target.shape[1:]}; set data.image_size "
            f"to resize both (now data.image_size={image_size})"
        )


class PairDataModule(BaseDataModule):
    data_kind = "pair"

    def __init__(self, source: dict, target: dict, **loader_options):
        super().__init__(**loader_options)
        self.source_spec, self.target_spec = dict(source), dict(target)
        self.source: Splits | None = None
        self.target: Splits | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = load_dataset(self.source_spec, where="data.source", **self.split_options())
            self.target = load_dataset(self.target_spec, where="data.target", **self.split_options())
            check_pair(self.source, self.target, self.channels, self.image_size)

    @property
    def data_info(self) -> dict:
        channels, height, _ = self.source.shape
        return {"num_classes": self.source.num_classes, "in_chans": channels, "image_size": height}

    def train_dataloader(self):
        loaders = {
            "source": self.loader(self.source.train, train=True),
            "target": self.loader(ImagesOnly(self.target.train), train=True),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        return [self.loader(self.target.val, train=False), self.loader(self.source.val, train=False)]

    def test_dataloader(self):
        return [self.loader(self.target.test, train=False), self.loader(self.source.test, train=False)]
