"""Where a run's wall time goes: a cheap callback that adds up the phases of fit and test.

    python run.py ... +callbacks.phase_timer._target_=lightning_modules.phase_timer.PhaseTimer \\
        +callbacks.phase_timer.path='${paths.output_dir}/phase_times.json'

Phases (seconds, wall clock, this process):
  train_steps      forward, backward and optimizer step (on_train_batch_start -> on_train_batch_end)
  train_data       batch end -> next batch start (epoch start -> first): the DataLoader fetch, the transfer
                   to the device and on_after_batch_transfer (the batched views of SSL methods are made there)
  validation       validation loops, the sanity check included (the SSL kNN/probe evaluation runs here)
  test             the test loop
  checkpoints      Trainer.save_checkpoint (ModelCheckpoint's top-k and last.ckpt)
  epoch_ends       the rest of the fit loop: epoch-end hooks, logging, schedulers
and the absolute times `setup_at`, `fit_start_at`, `fit_end_at`, `test_end_at`, `teardown_at` (time.time()),
so a caller that knows when the process started can add start-up (imports, data, model) and the end
(plots drawn after the run, writing results). The JSON is written at teardown.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl


class PhaseTimer(pl.Callback):
    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds: dict[str, float] = defaultdict(float)
        self.at: dict[str, float] = {}
        self._mark: dict[str, float] = {}
        self._batch_end: float | None = None

    def _start(self, phase: str) -> None:
        self._mark[phase] = time.perf_counter()

    def _stop(self, phase: str) -> None:
        if phase in self._mark:
            self.seconds[phase] += time.perf_counter() - self._mark.pop(phase)

    def setup(self, trainer, pl_module, stage):
        self.at.setdefault("setup_at", time.time())
        save = trainer.save_checkpoint

        def timed_save(*args, **kwargs):  # ModelCheckpoint saves through the Trainer
            self._start("checkpoints")
            try:
                return save(*args, **kwargs)
            finally:
                self._stop("checkpoints")

        if not getattr(save, "_phase_timed", False):
            timed_save._phase_timed = True
            trainer.save_checkpoint = timed_save

    def on_fit_start(self, trainer, pl_module):
        self.at["fit_start_at"] = time.time()
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._batch_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._batch_end is not None:
            self.seconds["train_data"] += now - self._batch_end
        self._mark["train_steps"] = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stop("train_steps")
        self._batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self._batch_end = None

    def on_validation_start(self, trainer, pl_module):
        self._start("validation")

    def on_validation_end(self, trainer, pl_module):
        self._stop("validation")
        self._batch_end = time.perf_counter() if trainer.training else None

    def on_fit_end(self, trainer, pl_module):
        self.at["fit_end_at"] = time.time()
        named = sum(self.seconds[k] for k in ("train_steps", "train_data", "validation", "checkpoints"))
        self.seconds["epoch_ends"] = max(0.0, time.perf_counter() - self._fit_started - named)

    def on_test_start(self, trainer, pl_module):
        self._start("test")

    def on_test_end(self, trainer, pl_module):
        self._stop("test")
        self.at["test_end_at"] = time.time()

    def teardown(self, trainer, pl_module, stage):
        self.at["teardown_at"] = time.time()
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"seconds": dict(self.seconds), **self.at}, indent=1) + "\n")
