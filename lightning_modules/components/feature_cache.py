"""A frozen network's features of a whole split, computed once: methods that train only on top of a
fixed feature extractor (linear probes on a frozen backbone, a VAE on pretrained features) train on
these instead of sending every image through the extractor in every epoch."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class FeatureDataset(Dataset):
    """Cached backbone features with their labels: items `(feature vector, label)`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.features[i], int(self.labels[i])

    def subset(self, indices) -> "FeatureDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return FeatureDataset(self.features[idx], self.labels[idx])

    def __getitems__(self, indices: list[int]) -> list:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.features[idx].unbind(0), self.labels[idx].tolist()))


@torch.no_grad()
def compute_features(backbone: nn.Module, dataset, batch_size: int, device: torch.device,
                     channels_last: bool = False) -> FeatureDataset:
    """The backbone's features of every item of `dataset`, in order. Reads the dataset directly (no
    DataLoader), so the global random state the training loader shuffles with is left as it was."""
    from datamodules.datasets import fetch_items

    features, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = fetch_items(dataset, list(range(start, min(start + batch_size, len(dataset)))))
        x = torch.stack([x for x, _ in items]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features.append(backbone(x).float().cpu())
        labels += [int(y) for _, y in items]
    return FeatureDataset(torch.cat(features), torch.tensor(labels, dtype=torch.long))


class CachedSplits:
    """A DataModule's splits (of one `domain` of a pair, or of the data) served as their features computed
    once (`swap`), and put back (`restore`), through the DataModule's split / replace_split contract."""

    def __init__(self):
        self.originals: dict[tuple[str, str | None], Dataset] = {}

    def swap(self, datamodule, names: tuple[str, ...], encode, device: torch.device,
             channels_last: bool = False, domain: str | None = None) -> None:
        for name in names:
            dataset = datamodule.split(name, domain)
            if dataset is None or isinstance(dataset, FeatureDataset):
                continue
            features = compute_features(encode, dataset, datamodule.eval_batch_size, device, channels_last)
            self.originals[name, domain] = datamodule.replace_split(name, features, domain)

    def restore(self, datamodule) -> None:
        for (name, domain), dataset in self.originals.items():
            datamodule.replace_split(name, dataset, domain)
        self.originals = {}
