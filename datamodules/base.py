"""What every DataModule shares: loader settings and the `data_info` the runner hands to a method."""
from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.accelerators import CUDAAccelerator
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from .datasets import ImageFileDataset, TensorImageDataset
from .decoded_cache import check_cache_option
from .errors import ConfigError
from .streaming import ShardStream, StreamLoader
from .train_augment import AffineAugment


class BaseDataModule(pl.LightningDataModule):
    """Loader settings; subclasses build their datasets in `setup` and say what they hold.

    `data_kind` is "single" (a `dataset` spec) or "pair" (`source` and `target` specs); the runner
    checks it against the data config before anything is loaded.
    """

    data_kind = "single"
    labels_needed = True  # False: labels only evaluate the method (a class missing from training is a warning)

    def __init__(
        self,
        image_size: int | None = None,
        channels: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        train_augment: dict | None = None,
        cache: str = "auto",
        cache_dir: str | None = None,
        cache_max_gb: float | None = None,
        fold: dict | None = None,
    ):
        super().__init__()
        self.train_augment = AffineAugment.from_config(train_augment)
        self._device_generator: torch.Generator | None = None
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={channels} is not supported; choices: 1, 3 (or null for the native count)")
        if image_size is not None and image_size < 4:
            raise ConfigError(f"data.image_size={image_size} is too small (>= 4, or null for the native size)")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
        self.image_size, self.channels = image_size, channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0 (or null: sized to the machine)")
        self.num_workers, self.pin_memory_option = num_workers, pin_memory
        self.persistent_workers_option = persistent_workers
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.fold = fold  # {index, folds, seed}: a k-fold cross-validation split (set by the runner from cv.*)
        check_cache_option(cache, cache_max_gb)
        self.cache_options = dict(cache=cache, cache_dir=cache_dir, cache_max_gb=cache_max_gb)

    @property
    def pin_memory(self) -> bool:
        """data.pin_memory; null (default) = pinned exactly when the trainer runs on a CUDA GPU."""
        if self.pin_memory_option is not None:
            return bool(self.pin_memory_option)
        trainer = getattr(self, "trainer", None)
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With `train_augment`, every training image (each float image tensor of the batch: `x` of
        `(x, y)`, labeled and unlabeled, source and target) gets its own random affine draw."""
        trainer = getattr(self, "trainer", None)
        if self.train_augment is None or trainer is None or not trainer.training:
            return batch

        def augment(x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 4 or not x.is_floating_point():
                return x  # labels, indices, uint8 images of the SSL views path
            return self.train_augment(x, self.device_generator(x.device))

        return apply_to_collection(batch, torch.Tensor, augment)

    def device_generator(self, device: torch.device) -> torch.Generator:
        """A generator on `device` for augmentation draws, seeded from the run seed and, under DDP,
        the process rank so that each process draws its own parameters (seed_everything gives all
        ranks one seed)."""
        if self._device_generator is None or self._device_generator.device != device:
            trainer = getattr(self, "trainer", None)
            rank = trainer.global_rank if trainer is not None else 0
            self._device_generator = torch.Generator(device=device).manual_seed(torch.initial_seed() + 1_000_003 * rank)
        return self._device_generator

    def split_options(self) -> dict:
        return dict(
            image_size=self.image_size, channels=self.channels, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, split_seed=self.split_seed, labels_needed=self.labels_needed,
            fold=self.fold, **self.cache_options,
        )

    def worker_options(self, dataset: Dataset) -> dict:
        """DataLoader workers: data.num_workers, or (null) none for a split held in memory (a batch is one
        gather) and, for files read per step, the cores the compute threads leave free (at most 4)."""
        workers = self.num_workers
        if workers is None:
            while not isinstance(dataset, (TensorImageDataset, ImageFileDataset)) and hasattr(dataset, "dataset"):
                dataset = dataset.dataset  # through views / index / subset wrappers
            in_memory = not isinstance(dataset, (ImageFileDataset, ShardStream))
            workers = 0 if in_memory else min(4, max(0, (os.cpu_count() or 1) - torch.get_num_threads()))
        return {"num_workers": workers, "persistent_workers": bool(self.persistent_workers_option and workers > 0)}

    def loader(self, dataset: Dataset, train: bool, batch_size: int | None = None, steps: int | None = None) -> DataLoader:
        """`steps`: a training epoch of exactly that many batches, drawn from reshuffled passes over `dataset`."""
        size = batch_size or (self.batch_size if train else self.eval_batch_size)
        if isinstance(dataset, ShardStream):
            return self.stream_loader(dataset, size, steps)
        sampler = RandomSampler(dataset, num_samples=steps * size) if train and steps else None
        return DataLoader(
            dataset,
            batch_size=size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and (sampler is not None or len(dataset) > (batch_size or self.batch_size)),
            pin_memory=self.pin_memory,
            **self.worker_options(dataset),
        )

    def shard_loader(self, dataset: Dataset) -> DataLoader:
        """A shuffling training loader for loaders this DataModule drives itself (several domains); under DDP
        each process reads its own shard (DistributedSampler, reshuffled by `endless` every pass)."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if world == 1:
            return self.loader(dataset, train=True)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank, shuffle=True,
                                     seed=self.split_seed, drop_last=len(dataset) >= world)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, pin_memory=self.pin_memory,
                          drop_last=len(dataset) // world > self.batch_size, **self.worker_options(dataset))

    def stream_loader(self, dataset: ShardStream, size: int, steps: int | None) -> DataLoader:
        """The streamed train split: this process's rank and world size (set by now: Lightning asks for the
        loader after the process group starts), the epoch from the Trainer at each epoch's start."""
        if steps:
            raise ConfigError("data.steps_per_epoch does not apply with data.cache=stream (an epoch is one "
                              "pass over the shards); set it to null")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        dataset.seed = torch.initial_seed() % 2**31  # the run's seed (seed_everything), alike on every rank
        return StreamLoader(dataset.distributed(rank, world, size), lambda: trainer.current_epoch if trainer else 0,
                            batch_size=size, drop_last=True, pin_memory=self.pin_memory,
                            **self.worker_options(dataset))

    @property
    def data_info(self) -> dict:
        """num_classes, in_chans, image_size of the converted data (call after setup)."""
        raise NotImplementedError

    # ---- the contract with methods: what a LightningModule may ask of its DataModule beyond the loaders
    # Lightning calls (evaluations outside the loops, feature caches). Nothing else of a DataModule's insides.

    def split(self, name: str, domain: str | None = None) -> Dataset:
        """The `name` split (train | val | test) of the data, or of `domain` (source | target) of a pair."""
        return getattr(self._splits(domain), name)

    def replace_split(self, name: str, dataset: Dataset, domain: str | None = None) -> Dataset:
        """Serve `dataset` as the `name` split from now on (e.g. its features computed once); returns the
        split it replaces, to put back with another call."""
        splits = self._splits(domain)
        previous = getattr(splits, name)
        setattr(splits, name, dataset)
        return previous

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """`dataset` in order, at the evaluation batch size, without training augmentation."""
        return self.loader(dataset, train=False)

    def _splits(self, domain: str | None):
        if domain is not None:
            raise ConfigError(f"{type(self).__name__} holds one dataset; it has no domain {domain!r}")
        return self.splits
