"""SLURM: Lightning's auto-requeue before the time limit, and the snapshots it leaves behind."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

log = logging.getLogger("transferlab")


def cluster_plugins(cfg: DictConfig) -> list:
    """On SLURM: Lightning's auto-requeue (save `hpc_ckpt_N.ckpt` in the run dir, `scontrol requeue`) on the
    signal submitit asks SLURM to send before the time limit; the requeued job resumes from that file."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # what submitit's sbatch --signal sends
    requeue_signal = getattr(signal, f"SIG{name.removeprefix('SIG')}")
    if cfg.get("auto_requeue", True):
        signal.signal(requeue_signal, signal.SIG_DFL)  # submitit's own handler would keep Lightning's off
    return [SLURMEnvironment(auto_requeue=cfg.get("auto_requeue", True), requeue_signal=requeue_signal)]


def discard_hpc_checkpoints(trainer: pl.Trainer) -> None:
    """After a finished fit, so `trainer.test` on SLURM tests the trained weights, not a requeue snapshot.
    Only snapshots this job wrote or resumed from (read safely) are removed; any other file is left in place."""
    if trainer.is_global_zero:
        trusted = getattr(trainer.strategy.checkpoint_io, "trusted", set())
        for stale in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
            if str(stale) in trusted:
                stale.unlink()
            else:
                log.warning("%s was neither written nor resumed from by this job: left in place", stale)
    trainer.strategy.barrier("discard_hpc_checkpoints")
