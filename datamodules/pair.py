"""Domain pairs: labeled source `(xs, ys)` and unlabeled target `xt` with the same classes.

Training batches are `{"source": (xs, ys), "target": xt}` drawn from two endless iterators (each
domain reshuffles when it runs out), `steps_per_epoch` of them per epoch, so training length is a
number of steps and methods can follow the progress p = step / total in [0, 1]. The target's
labels never reach a training batch (only `train_target_labels=true`, the target-oracle baseline,
asks for them). They are used by the evaluation loaders: `val_dataloader` and `test_dataloader`
return `[target, source]` loaders of `(x, y)` (dataloader_idx 0 = target).

A domain spec may carry `train_size: N`: a seeded random subset of N training images (the ADDA
protocol: 2,000 MNIST and 1,800 USPS images).

Partial domain adaptation: `target_classes` (indices or names of source classes) keeps only those classes
in every target split, so the target's label space is a subset of the source's (Cao et al. 2018). Labels
keep their source indices; the classifier still has every source class.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .base import BaseDataModule
from .datasets import ItemView
from .errors import ConfigError, DataFormatError
from .registry import Splits, load_dataset
from .splits import class_balanced_subset


class ImagesOnly(ItemView):
    """Hides labels: yields only the image of each `(image, label)`."""

    def item(self, original, i):
        return original[0]


def subsample(dataset: Dataset, size: int | None, seed: int, where: str) -> Dataset:
    """A seeded random subset of `size` examples (all of them when size is None)."""
    if size is None:
        return dataset
    if not 1 <= size <= len(dataset):
        raise ConfigError(f"{where}.train_size={size} must lie in [1, {len(dataset)}] (the train split's size)")
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:size])
    return dataset.subset(idx) if hasattr(dataset, "subset") else Subset(dataset, idx.tolist())


def endless(loader: DataLoader):
    """Batches of `loader` forever; a DistributedSampler gets a new epoch (new shuffle) each pass."""
    passes = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(passes)
        yield from loader
        passes += 1


class EndlessDomainLoader:
    """`steps` batches per epoch, each `{name: next batch of that domain}` for every domain of `loaders`
    (a pair: {"source": ..., "target": ...}; domain generalization: every training domain).

    The iterators live across epochs, so no domain restarts early and no batch is lost when the domains
    have different sizes. With `alternate=True` (methods whose step uses one domain at a time, e.g. DRCN)
    each batch holds one domain, the domains in turn, counted across epochs, so no batch is loaded only
    to be ignored.
    """

    def __init__(self, loaders: dict[str, DataLoader], steps: int, alternate: bool = False):
        self.loaders, self.steps, self.alternate = dict(loaders), steps, alternate
        self._iterators = None
        self._served = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if self._iterators is None:
            self._iterators = {name: endless(loader) for name, loader in self.loaders.items()}
        names = list(self._iterators)
        for _ in range(self.steps):
            if self.alternate:
                name = names[self._served % len(names)]
                yield {name: next(self._iterators[name])}
            else:
                yield {name: next(iterator) for name, iterator in self._iterators.items()}
            self._served += 1


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


def class_indices(wanted: list, classes: list[str]) -> list[int]:
    """Indices of `wanted` (indices or names) in the source's `classes`; an error names any that are not there."""
    out, unknown = [], []
    for c in wanted:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes):
            out.append(c)
        elif str(c) in classes and not isinstance(c, int):
            out.append(classes.index(str(c)))
        else:
            unknown.append(c)
    if unknown:
        raise ConfigError(f"data.target_classes={list(wanted)}: {unknown} not among the source's classes; choices: "
                          f"indices 0..{len(classes) - 1} or names {classes[:20]}{' ...' if len(classes) > 20 else ''}")
    return sorted(set(out))


def only_classes(dataset: Dataset, keep: list[int]) -> Dataset:
    """The examples of `dataset` whose label is in `keep` (its labels stay as they are)."""
    labels = np.asarray(dataset.labels)
    idx = np.flatnonzero(np.isin(labels, keep))
    return dataset.subset(idx) if hasattr(dataset, "subset") else Subset(dataset, idx.tolist())


def relabeled(dataset: Dataset, labels: torch.Tensor) -> Dataset:
    """A copy of an in-memory or file dataset whose labels are `labels` (same order)."""
    new = dataset.subset(np.arange(len(dataset)))
    new.labels = torch.as_tensor(labels, dtype=torch.long)
    if hasattr(new, "samples"):  # image files carry their label beside the path
        new.samples = [(path, int(y)) for (path, _), y in zip(new.samples, new.labels)]
    return new


DOMAIN_SCHEDULES = ("joint", "alternate")


class PairDataModule(BaseDataModule):
    data_kind = "pair"

    def __init__(self, source: dict, target: dict, steps_per_epoch: int | None = None,
                 train_target_labels: bool = False, target_classes: list | None = None,
                 domain_schedule: str = "joint", target_labels_per_class: int | None = None,
                 known_classes: int | None = None, **loader_options):
        super().__init__(**loader_options)
        self.source_spec, self.target_spec = dict(source), dict(target)
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch={steps_per_epoch} must be >= 1 (or null: the larger domain's batches)")
        self.steps_per_epoch = steps_per_epoch
        self.train_target_labels = train_target_labels
        # the method's choice (its config sets data.domain_schedule): joint = both domains every step,
        # alternate = a source batch, then a target batch (methods whose step uses one domain, e.g. DRCN)
        if domain_schedule not in DOMAIN_SCHEDULES:
            raise ConfigError(f"data.domain_schedule={domain_schedule!r}; choices: {list(DOMAIN_SCHEDULES)}")
        self.domain_schedule = domain_schedule
        if target_classes is not None and (isinstance(target_classes, (str, int)) or not list(target_classes)):
            raise ConfigError(f"data.target_classes={target_classes!r}: give a non-empty list of source class "
                              f"indices or names (e.g. data.target_classes=[0,1,2,3,4]), or null for all")
        self.target_classes = None if target_classes is None else list(target_classes)
        if target_labels_per_class is not None and (isinstance(target_labels_per_class, bool)
                                                    or not isinstance(target_labels_per_class, int)
                                                    or target_labels_per_class < 1):
            raise ConfigError(f"data.target_labels_per_class={target_labels_per_class!r} must be an integer >= 1 "
                              f"(or null: no labeled target image)")
        self.target_labels_per_class = target_labels_per_class
        self.target_labeled: Dataset | None = None  # semi-supervised DA: k labeled target images per class
        if known_classes is not None and (isinstance(known_classes, bool) or not isinstance(known_classes, int)
                                          or known_classes < 2):
            raise ConfigError(f"data.known_classes={known_classes!r} must be an integer >= 2 (the first K source "
                              f"classes are known, the target's others unknown), or null (closed set)")
        if known_classes is not None and target_classes is not None:
            raise ConfigError("data.known_classes (open set) and data.target_classes (partial) exclude each other")
        self.known_classes = known_classes
        self.source: Splits | None = None
        self.target: Splits | None = None

    def _load(self, spec: dict, where: str) -> Splits:
        spec = dict(spec)
        train_size = spec.pop("train_size", None)
        splits = load_dataset(spec, where=where, **self.split_options())
        splits.train = subsample(splits.train, train_size, self.split_seed, where)
        return splits

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = self._load(self.source_spec, "data.source")
            self.target = self._load(self.target_spec, "data.target")
            check_pair(self.source, self.target, self.channels, self.image_size)
            if self.target_classes is not None:
                keep = class_indices(self.target_classes, self.source.classes)
                for split in ("train", "val", "test"):
                    setattr(self.target, split, only_classes(getattr(self.target, split), keep))
            if self.known_classes is not None:
                self._open_set(self.known_classes)
            if self.target_labels_per_class is not None:
                self.target_labeled = self._labeled_target(self.target_labels_per_class)

    def _open_set(self, k: int) -> None:
        """Open-set DA (Panareda Busto & Gall 2017; Saito et al. 2018): the source keeps its first k classes, the
        target keeps all of its images and its other classes become one label, k ("unknown")."""
        classes = list(self.source.classes)
        if k >= len(classes):
            raise ConfigError(f"data.known_classes={k}: an open-set run needs target classes unknown to the source, "
                              f"but the data has only {len(classes)} classes; choose K < {len(classes)}")
        for split in ("train", "val", "test"):
            setattr(self.source, split, only_classes(getattr(self.source, split), list(range(k))))
            target = getattr(self.target, split)
            setattr(self.target, split, relabeled(target, torch.as_tensor(target.labels).clamp(max=k)))
        if not (torch.as_tensor(self.target.test.labels) == k).any():
            raise ConfigError(f"data.known_classes={k}: the target's test split has no image of a class beyond "
                              f"the first {k}, so there is no unknown class to find")
        self.source.classes = classes[:k]
        self.target.classes = classes[:k] + ["unknown"]

    def _labeled_target(self, k: int) -> Dataset:
        """k labeled target training images of every class (class-balanced, seeded by split_seed); they stay
        in the unlabeled target set too, as in semi-supervised DA benchmarks (Saito et al. 2019)."""
        labels = np.asarray(self.target.train.labels)
        counts = np.bincount(labels, minlength=self.target.num_classes)
        present = np.flatnonzero(counts)
        smallest = present[counts[present].argmin()]
        if k > counts[smallest]:
            raise ConfigError(f"data.target_labels_per_class={k} is more than the target's smallest class has: "
                              f"{counts[smallest]} training images of class '{self.target.classes[smallest]}'")
        return self.target.train.subset(class_balanced_subset(labels, k * len(present), self.split_seed))

    @property
    def data_info(self) -> dict:
        channels, height, _ = self.source.shape
        return {"num_classes": self.source.num_classes, "in_chans": channels, "image_size": height,
                "open_set": self.known_classes is not None}

    def split(self, name: str, domain: str | None = None) -> Dataset:
        """As for every DataModule, plus `labeled` of the target: the labeled target images of semi-supervised
        DA (None without `target_labels_per_class`; the source has none)."""
        if name == "labeled":
            return self.target_labeled if self._splits(domain) is self.target else None
        return super().split(name, domain)

    def replace_split(self, name: str, dataset: Dataset, domain: str | None = None) -> Dataset:
        if name == "labeled" and self._splits(domain) is self.target:
            previous, self.target_labeled = self.target_labeled, dataset
            return previous
        return super().replace_split(name, dataset, domain)

    def _splits(self, domain: str | None):
        if domain not in ("source", "target"):
            raise ConfigError(f"a domain pair has domains 'source' and 'target', not {domain!r}")
        return self.source if domain == "source" else self.target

    def train_steps_per_epoch(self, world_size: int = 1) -> int:
        """`steps_per_epoch`, or the batches of the larger domain (per process under DDP)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        largest = max(len(self.source.train), len(self.target.train)) // max(world_size, 1)
        return max(1, largest // self.batch_size)

    def train_dataloader(self):
        target = self.target.train if self.train_target_labels else ImagesOnly(self.target.train)
        trainer = getattr(self, "trainer", None)
        steps = self.train_steps_per_epoch(trainer.world_size if trainer is not None else 1)
        loaders = {"source": self.shard_loader(self.source.train), "target": self.shard_loader(target)}
        if self.target_labeled is not None:
            loaders["target_labeled"] = self.shard_loader(self.target_labeled)
        return EndlessDomainLoader(loaders, steps, alternate=self.domain_schedule == "alternate")

    def val_dataloader(self):
        return [self.loader(self.target.val, train=False), self.loader(self.source.val, train=False)]

    def test_dataloader(self):
        return [self.loader(self.target.test, train=False), self.loader(self.source.test, train=False)]
