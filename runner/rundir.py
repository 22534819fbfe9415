"""Run directories never lose a finished result.

- `claim_run_dir` (run.py, around every run): refuses a dir that holds a completed run, or an unfinished one
  with checkpoints, unless the command resumes it (`ckpt_path=last`) or replaces it (`overwrite=true`, which
  first deletes the earlier run's outputs); then holds `.transferlab.lock` until the run ends, so a second
  run into the same dir fails at once. Under DDP only rank 0 does this (the other ranks re-run run.py).
- `RunDirGuard` (a Hydra callback, conf/hydra/default.yaml): the same check and lock before Hydra writes
  `.hydra/` and the log into an existing dir, so a refused command leaves the dir byte-identical.
- `AtomicCheckpointIO`: every checkpoint is written to `<path>.tmp` beside it and renamed, so a kill while
  saving leaves the previous checkpoint whole.
- `ResumableCSVLogger`: a resumed run appends to `csv/metrics.csv` instead of deleting it.
"""
from __future__ import annotations

import atexit
import csv
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins import TorchCheckpointIO

from datamodules.errors import ConfigError
from runner.results import RESULTS_FILE, is_rank_zero, read_status

log = logging.getLogger("transferlab")

LOCK_FILE = ".transferlab.lock"
# What a run writes into its dir; a fresh run (overwrite=true, or over a failed run) deletes these and nothing
# else (Hydra's .hydra/ is rewritten by the new run, its *.log appended to).
RUN_OUTPUTS = ("results.json", "encoder.pt", "wandb_id.txt", "fid.json", "checkpoints", "csv", "tensorboard",
               "wandb", "plots", "samples", "*.png", "hpc_ckpt_*.ckpt")


class RunDirError(ConfigError, CompactHydraException):
    """The run dir cannot be used as asked (raised in the task, Hydra prints a CompactHydraException as its
    message alone)."""


# -- what the dir holds ---------------------------------------------------------------------------------


def checkpoints_in(run_dir: Path) -> list[Path]:
    return sorted([*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")])


def resumes(run_dir: Path, ckpt_path: str | None) -> bool:
    """ckpt_path=last or a checkpoint of this run dir (ckpt_path=<run dir>/checkpoints/epoch003.ckpt)."""
    if ckpt_path is None or ckpt_path == "last":
        return ckpt_path == "last"
    return Path(ckpt_path).expanduser().absolute().is_relative_to(Path(run_dir).absolute())


def holds_children(run_dir: Path) -> bool:
    """A run of runs (runner/protocols): its results.json names the kind of its children."""
    try:
        return bool(json.loads((Path(run_dir) / RESULTS_FILE).read_text()).get("children"))
    except (OSError, ValueError, AttributeError):
        return False


def check_run_dir(run_dir: Path, ckpt_path: str | None, overwrite: bool, option: str = "hydra.run.dir") -> bool:
    """Refuse to start a fresh run over a completed one, or over checkpoints that a resume could use;
    True when the run starts afresh (a failed run that left no checkpoint is replaced: nothing is lost)."""
    run_dir = Path(run_dir)
    if resumes(run_dir, ckpt_path):
        if overwrite:
            raise RunDirError(f"ckpt_path={ckpt_path} resumes the run in {run_dir} but overwrite=true deletes it "
                              f"(its checkpoints with it); keep one of the two")
        return False
    if overwrite:
        return True
    if any(run_dir.glob("hpc_ckpt_*.ckpt")):
        return False  # a requeued SLURM job: Lightning resumes from its snapshot by itself
    status, ckpts = read_status(run_dir / RESULTS_FILE), checkpoints_in(run_dir)
    if holds_children(run_dir):
        return False  # a run of runs (folds, stages, trials): the same command reuses its completed children
    if status == "completed":
        what = "a completed run (results.json: completed)"
    elif ckpts:
        what = (f"an unfinished run (results.json: {status or 'missing'}; "
                f"{len(ckpts)} checkpoint(s), e.g. {ckpts[-1].relative_to(run_dir)})")
    else:
        return True
    where = f"{option}={run_dir}" if option == "hydra.run.dir" else f"the job dir {run_dir} of {option}"
    raise RunDirError(f"{where} holds {what}; nothing was changed. Add ckpt_path=last to continue it, "
                      f"overwrite=true to delete it and start again, or choose another {option}")


def clear_run_dir(run_dir: Path) -> list[str]:
    """A fresh run (overwrite=true, or over a failed run): delete the earlier run's outputs (RUN_OUTPUTS),
    so its logs and checkpoints do not mix with the new run's."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(Path(run_dir).glob(pattern)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path.name)
    if removed:
        log.warning("deleted the earlier run's %s in %s (a fresh run)", ", ".join(removed), run_dir)
    return removed


# -- the lock --------------------------------------------------------------------------------------------

_held: dict[Path, int] = {}  # lock file -> its open descriptor, held with flock until released


def acquire_lock(run_dir: Path) -> Path:
    """Take `<run_dir>/.transferlab.lock` (flock, so the kernel frees it if this process dies; the file
    says who holds it). Re-entrant within one process. A file left by a dead process is taken over."""
    path = Path(run_dir).absolute() / LOCK_FILE
    if path in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir, path, fd) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # not a file that its holder unlinked while we waited for it
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _read_holder(fd)
    if previous:
        log.warning("took over the lock %s left by %s, which is no longer running", path, _describe(previous))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[path] = fd
    return path


def check_not_in_use(run_dir: Path) -> None:
    """Fail if another process holds the dir's lock, without creating or changing anything."""
    path = Path(run_dir).absolute() / LOCK_FILE
    if path in _held:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, path, fd) from None
    os.close(fd)  # frees the probe


def _in_use(run_dir: Path, path: Path, fd: int) -> RunDirError:
    holder = _describe(_read_holder(fd))
    os.close(fd)
    return RunDirError(f"hydra.run.dir={run_dir} is in use by another run ({holder}; lock file {path}); wait "
                       f"for it to finish or choose another hydra.run.dir")


def release_lock(run_dir: Path) -> None:
    path = Path(run_dir).absolute() / LOCK_FILE
    fd = _held.pop(path, None)
    if fd is not None:
        path.unlink(missing_ok=True)  # while still holding it: a waiting run then takes a new file
        os.close(fd)


@atexit.register
def _release_all() -> None:  # a failure between Hydra's callback and the task, or any early exit
    for path in list(_held):
        release_lock(path.parent)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


# -- around a run -------------------------------------------------------------------------------------------


@contextmanager
def claim_run_dir(run_dir: Path, ckpt_path: str | None, overwrite: bool):
    """Lock the dir, check it, clear a fresh run's; release the lock when the run ends, however it ends."""
    if not is_rank_zero():
        yield
        return
    run_dir = Path(run_dir)
    acquire_lock(run_dir)  # first: the state read below cannot change under us
    try:
        if check_run_dir(run_dir, ckpt_path, overwrite):
            clear_run_dir(run_dir)
        yield
    finally:
        release_lock(run_dir)


class RunDirGuard(Callback):
    """Hydra callback: refuse (or lock) an existing run dir before Hydra writes its files into it. Hydra
    turns a callback's exception into a warning and goes on, so a refusal prints its message and exits 1."""

    def on_run_start(self, config, **kwargs) -> None:
        run_dir = Path(_resolve(config, "hydra.run.dir"))
        if is_rank_zero() and run_dir.is_dir():
            with _exit_on_refusal():
                check_not_in_use(run_dir)  # first: a running job's dir is "in use", whatever it holds
                check_run_dir(run_dir, config.get("ckpt_path"), bool(config.get("overwrite")))
                acquire_lock(run_dir)  # until the task's claim_run_dir releases it

    def on_multirun_start(self, config, **kwargs) -> None:
        """A sweep into an existing sweep dir: refuse before any job when one of its jobs would be refused."""
        sweep_dir = Path(_resolve(config, "hydra.sweep.dir"))
        if sweep_dir.is_dir():
            with _exit_on_refusal():
                for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
                    check_run_dir(job_dir, config.get("ckpt_path"), bool(config.get("overwrite")), "hydra.sweep.dir")


@contextmanager
def _exit_on_refusal():
    try:
        yield
    except RunDirError as err:
        print(err, file=sys.stderr)
        raise SystemExit(1) from None


def _resolve(config, key: str) -> str:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(config)  # for ${hydra:...}; run_job sets it again right after
    return str(OmegaConf.select(config, key))


# -- checkpoints and CSV metrics that survive kills and resumes ---------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into `<path>.tmp` in the same dir, fsync, then os.replace: a reader (or a resume after a
    kill mid-save) sees the previous checkpoint or the new one, never half of one. Loading is Lightning's."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (Lightning's writer deletes it). Its rows at or after the first step
    logged now are dropped once: they were logged after the checkpoint this run resumed from."""

    def _check_log_dir_exists(self) -> None:
        self._resumed = self._fs.isfile(self.metrics_file_path)
        if self._resumed:
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def save(self) -> None:
        if self._resumed and self.metrics:
            self._resumed = False
            first = min(m["step"] for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                rows = list(csv.DictReader(file))
            kept = [r for r in rows if not r.get("step") or int(r["step"]) < first]
            if len(kept) < len(rows):
                with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)
        super().save()


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv a resumed run (ckpt_path=last) continues."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
