"""Fault tolerance: a checkpoint on SIGTERM / Ctrl-C, and a resume that replays the interrupted epoch.

`FaultTolerance` (the runner adds it to every run):
- on an interrupt (Ctrl-C, SIGTERM, a SLURM pre-emption) during `fit` it writes
  `checkpoints/last.ckpt`, so `ckpt_path=last` continues from the batch where the run stopped;
- it makes that resume exact for map-style training loaders with a standard batch sampler: the
  checkpoint stores the global RNG states at the start of the epoch and at the interruption, and
  the resumed run re-draws the same shuffle, skips the batches already trained on, and restores the
  RNG, so an interrupted-then-resumed run ends where an uninterrupted one does (with
  `deterministic=true`); a resume from an epoch-end checkpoint continues the RNG stream too. Random draws made while *loading* a batch (per-sample augmentation in the
  DataLoader) are not replayed; other loaders resume like Lightning does by default.

`SignalAtStep` sends a signal to the run's own process at a given training step: rehearse
pre-emption (`+callbacks.kill._target_=runner.fault_tolerance.SignalAtStep +callbacks.kill.step=50`).
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import signal as signal_lib
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader

log = logging.getLogger("transferlab")


def rng_state() -> dict:
    """Global RNG states as tensors and plain types (checkpoints load with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def is_interrupt(exception: BaseException) -> bool:
    """Ctrl-C, SIGTERM (Lightning's SIGTERMException is a SystemExit) or an explicit exit."""
    return isinstance(exception, (KeyboardInterrupt, SystemExit))


def interrupt_exit_code(exception: BaseException) -> int | None:
    """The shell's convention, 128 + the signal: 130 for Ctrl-C (a KeyboardInterrupt, or the sys.exit(1)
    Lightning raises after catching one), 143 for SIGTERM (Lightning's SIGTERMException); None otherwise."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(exception, SIGTERMException):
        return 128 + signal_lib.SIGTERM
    if isinstance(exception, KeyboardInterrupt) or (
            isinstance(exception, SystemExit) and isinstance(exception.__context__, KeyboardInterrupt)):
        return 128 + signal_lib.SIGINT
    return None


def is_mid_epoch(state: dict | None) -> bool:
    return state is not None and 0 < state["batches"] < state["epoch_batches"]


class ReplayDataLoader(DataLoader):
    """A DataLoader whose every pass starts from a recorded RNG state: the state is taken before the
    iterator exists (creating it draws the workers' base seed, the sampler then draws the shuffle)."""

    def __init__(self, *args, owner: "FaultTolerance", **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner

    def __iter__(self):
        resume = self.owner.resume_state
        if is_mid_epoch(resume):
            set_rng_state(resume["epoch_rng"])  # the same shuffle as the interrupted epoch
        elif resume is not None:  # saved at an epoch end: continue the RNG stream from there
            set_rng_state(resume["rng"])
            self.owner.resume_state = None
        self.owner.epoch_rng = rng_state()
        return super().__iter__()


class ReplayBatchSampler:
    """On a mid-epoch resume, skips the batches trained before the interruption, then restores the RNG
    as it was at the interruption."""

    def __init__(self, batch_sampler, owner: "FaultTolerance"):
        self.batch_sampler, self.owner = batch_sampler, owner

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        batches = iter(self.batch_sampler)
        resume = self.owner.resume_state
        if is_mid_epoch(resume):
            self.owner.resume_state = None
            for _ in itertools.islice(batches, resume["batches"]):  # already trained on
                pass
            set_rng_state(resume["rng"])
            log.info("resuming mid-epoch: skipped the %d batches trained before the interruption", resume["batches"])
        yield from batches


class FaultTolerance(pl.Callback):
    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.epoch_rng: dict | None = None
        self.resume_state: dict | None = None
        self._trainer: pl.Trainer | None = None

    # -- the training loader: wrap its batch sampler so the epoch can be replayed --------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or "train_dataloader" in vars(datamodule) or trainer.world_size > 1:
            return  # under DDP the DistributedSampler's shuffle is already a function of (seed, epoch)
        make_loader = datamodule.train_dataloader

        def train_dataloader():
            return self.replayable(make_loader())

        datamodule.train_dataloader = train_dataloader  # instance attribute; removed in teardown

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and "train_dataloader" in vars(datamodule):
            del datamodule.train_dataloader

    def replayable(self, loader):
        if type(loader) is not DataLoader or type(loader.batch_sampler) is not BatchSampler:
            return loader  # custom loaders: Lightning's default (approximate) mid-epoch resume
        return ReplayDataLoader(
            loader.dataset, owner=self, batch_sampler=ReplayBatchSampler(loader.batch_sampler, self),
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
            prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context,
        )

    # -- checkpoint state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        trainer = self._trainer
        if trainer is None or self.epoch_rng is None:
            return {}
        return {
            "epoch": trainer.current_epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            "epoch_batches": trainer.num_training_batches,
            "epoch_rng": self.epoch_rng,
            "rng": rng_state(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.resume_state = state_dict or None

    # -- the interruption ------------------------------------------------------------------------------

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not is_interrupt(exception) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning("interrupted (%s) at epoch %d, global step %d: saved %s; rerun the same command with "
                        "ckpt_path=last to continue", type(exception).__name__, trainer.current_epoch,
                        trainer.global_step, self.path)


class SignalAtStep(pl.Callback):
    """Send `signal` (SIGTERM, SIGINT, SIGUSR1...) to this process after `step` optimizer steps."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step = step
        self.signum = getattr(signal_lib, signal if signal.startswith("SIG") else f"SIG{signal}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

