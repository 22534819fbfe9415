"""A frozen network's features of a whole split, computed once: methods that train only on top of a
fixed feature extractor (linear probes on a frozen backbone, a VAE on pretrained features) train on
these instead of sending every image through the extractor in every epoch."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

STORE_FORMAT = 2  # bump when what a stored features file holds changes


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


def batches(dataset, batch_size: int):
    """(images, labels) of `dataset` in order, read directly (no DataLoader), so the global random state
    the training loader shuffles with is left as it was."""
    from datamodules.datasets import fetch_items

    for start in range(0, len(dataset), batch_size):
        items = fetch_items(dataset, list(range(start, min(start + batch_size, len(dataset)))))
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


@torch.no_grad()
def compute_features(backbone: nn.Module, dataset, batch_size: int, device: torch.device,
                     channels_last: bool = False, store: Path | None = None) -> FeatureDataset:
    """The backbone's features of every item of `dataset`, in order. With `store` (a folder), they are kept
    there under a key made of the backbone's weights and the exact input tensors, so that every later run of
    the same frozen network on the same images (other methods, other seeds, other labels) reads them instead."""
    if store is not None:
        key, labels = features_key(backbone, dataset, batch_size, device, channels_last)
        path = store / f"{key}.pt"
        features = load_stored(path, len(dataset)) if path.is_file() else None
        if features is not None:
            return FeatureDataset(features, labels)
    features, labels = [], []
    for x, y in batches(dataset, batch_size):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features.append(backbone(x).float().cpu())
        labels.append(y)
    out = FeatureDataset(torch.cat(features), torch.cat(labels))
    if store is not None:
        save_stored(path, out.features)
    return out


def features_key(backbone: nn.Module, dataset, batch_size: int, device: torch.device,
                 channels_last: bool) -> tuple[str, torch.Tensor]:
    """(key, the dataset's labels): the key changes with any weight or buffer of the backbone, any input value,
    the device type and the memory format (both may change the last bits of a feature), not with the labels
    (an open-set run relabels the same photos)."""
    digest = hashlib.sha256(f"v{STORE_FORMAT}|{device.type}|{channels_last}|{type(backbone).__name__}".encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    labels = []
    for x, y in batches(dataset, batch_size):
        digest.update(f"|{x.dtype}|{tuple(x.shape)}".encode())
        digest.update(x.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        labels.append(y)
    return digest.hexdigest()[:32], torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def load_stored(path: Path, size: int) -> torch.Tensor | None:
    """A stored features file (read without running code from it), or None when it is unreadable or
    does not hold `size` rows: then the features are computed again."""
    from .safe_load import safe_load

    try:
        features = safe_load(path, "data.cache_dir (stored features)")["features"]
    except Exception as err:  # noqa: BLE001 - truncated, foreign or tampered: recompute, never trust it
        log.warning("stored features %s unreadable (%s); computing them again", path, err)
        return None
    if not (isinstance(features, torch.Tensor) and features.ndim == 2 and len(features) == size):
        log.warning("stored features %s do not hold %d rows; computing them again", path, size)
        return None
    return features


def save_stored(path: Path, features: torch.Tensor) -> None:
    """Written to a temporary name and renamed: a killed run or a second process never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"features": features}, tmp)
        os.replace(tmp, path)
    except OSError as err:  # a read-only or full cache dir costs the next run the computation, nothing else
        log.warning("could not store features in %s: %s", path, err)


def feature_store(datamodule) -> Path | None:
    """Where the DataModule keeps what it computes once (`data.cache_dir`/features), when `data.cache` keeps
    things on disk (auto, disk); None otherwise."""
    options = getattr(datamodule, "cache_options", {})
    if options.get("cache") not in ("auto", "disk"):
        return None
    from datamodules.decoded_cache import cache_root

    return cache_root(options.get("cache_dir")) / "features"


class CachedSplits:
    """A DataModule's splits (of one `domain` of a pair, or of the data) served as their features computed
    once (`swap`), and put back (`restore`), through the DataModule's split / replace_split contract."""

    def __init__(self):
        self.originals: dict[tuple[str, str | None], Dataset] = {}

    def swap(self, datamodule, names: tuple[str, ...], encode, device: torch.device,
             channels_last: bool = False, domain: str | None = None, store: Path | None = None) -> None:
        for name in names:
            dataset = datamodule.split(name, domain)
            if dataset is None or isinstance(dataset, FeatureDataset):
                continue
            features = compute_features(encode, dataset, datamodule.eval_batch_size, device, channels_last, store)
            self.originals[name, domain] = datamodule.replace_split(name, features, domain)

    def restore(self, datamodule) -> None:
        for (name, domain), dataset in self.originals.items():
            datamodule.replace_split(name, dataset, domain)
        self.originals = {}
