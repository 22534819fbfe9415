"""Several labeled domains at once: domain generalization (`data=multi`, `data=rotated_mnist`).

`domains` maps a name to a dataset spec (any registered dataset); `test_domain` names the one held out.
Training batches are `{name: (x, y)}`, one batch of every training domain per step (DomainBed's
minibatches). Validation is DomainBed's training-domain validation: the val splits of the training domains,
pooled. Test is the held-out domain's test split, and that domain is read only by `setup("test")`: nothing
of it exists while the model trains (tests/test_domain_generalization.py checks it).

`unlabeled_target=true` turns this into multi-source domain adaptation: the held-out domain's training images,
without labels, join every batch as `"target"` (e.g. for model=m3sda); its test split still tests.
"""
from __future__ import annotations

from torch.utils.data import ConcatDataset

from .base import BaseDataModule
from .errors import ConfigError
from .pair import EndlessDomainLoader, ImagesOnly, check_pair, subsample
from .registry import Splits, load_dataset


TARGET = "target"  # the key of the unlabeled target's images in a training batch


class MultiDomainDataModule(BaseDataModule):
    data_kind = "multi"

    def __init__(self, domains: dict, test_domain: str | None = None, steps_per_epoch: int | None = None,
                 unlabeled_target: bool = False, **loader_options):
        super().__init__(**loader_options)
        self.domain_specs = {str(name): dict(spec) for name, spec in dict(domains or {}).items()}
        names = list(self.domain_specs)
        if len(names) < 2:
            raise ConfigError(f"data.domains has {len(names)} domain(s) {names}: domain generalization trains on "
                              f"several labeled domains and tests on another; give at least two")
        if TARGET in names:
            raise ConfigError(f"data.domains.{TARGET}: '{TARGET}' is reserved for the unlabeled target; rename it")
        if test_domain not in names:
            raise ConfigError(f"data.test_domain={test_domain!r} is not one of data.domains: {names}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch={steps_per_epoch} must be >= 1 (or null)")
        self.test_domain, self.steps_per_epoch = test_domain, steps_per_epoch
        self.train_domains = [n for n in names if n != test_domain]
        self.unlabeled_target = bool(unlabeled_target)
        self.domains: dict[str, Splits] = {}

    def _load(self, name: str) -> Splits:
        spec = dict(self.domain_specs[name])
        train_size = spec.pop("train_size", None)
        splits = load_dataset(spec, where=f"data.domains.{name}", **self.split_options())
        splits.train = subsample(splits.train, train_size, self.split_seed, f"data.domains.{name}")
        return splits

    def setup(self, stage: str | None = None) -> None:
        training = stage in ("fit", "validate") and not self.unlabeled_target
        for name in self.train_domains if training else [*self.train_domains, self.test_domain]:
            if name not in self.domains:
                self.domains[name] = self._load(name)
        first = self.domains[self.train_domains[0]]
        for name, splits in self.domains.items():
            check_pair(first, splits, self.channels, self.image_size)

    @property
    def data_info(self) -> dict:
        channels, height, _ = self.domains[self.train_domains[0]].shape
        return {"num_classes": self.domains[self.train_domains[0]].num_classes, "in_chans": channels,
                "image_size": height, "num_domains": len(self.train_domains)}

    def train_steps_per_epoch(self, world_size: int = 1) -> int:
        """`steps_per_epoch`, or the batches of the largest training domain (per process under DDP)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        largest = max(len(self.domains[n].train) for n in self.train_domains) // max(world_size, 1)
        return max(1, largest // self.batch_size)

    def train_dataloader(self):
        trainer = getattr(self, "trainer", None)
        steps = self.train_steps_per_epoch(trainer.world_size if trainer is not None else 1)
        loaders = {n: self.shard_loader(self.domains[n].train) for n in self.train_domains}
        if self.unlabeled_target:
            loaders[TARGET] = self.shard_loader(ImagesOnly(self.domains[self.test_domain].train))
        return EndlessDomainLoader(loaders, steps)

    def val_dataloader(self):
        return self.loader(ConcatDataset([self.domains[n].val for n in self.train_domains]), train=False)

    def test_dataloader(self):
        return self.loader(self.domains[self.test_domain].test, train=False)

    def _splits(self, domain: str | None):
        if domain not in self.domains:
            raise ConfigError(f"domain {domain!r} is not loaded; loaded: {list(self.domains)}")
        return self.domains[domain]
