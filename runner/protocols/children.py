"""Runs made of runs: cross-validation folds, pipeline stages, Optuna trials.

A child is a normal run dir under its parent's (`.hydra/`, `results.json`, `checkpoints/`, `encoder.pt`),
composed like `python run.py <the parent's overrides> <the child's overrides>` and run in this process by
the same task function as any run. A child whose results.json says completed is read, not run again, and
one that was killed after a checkpoint continues from it (`ckpt_path=last`): rerunning the parent's
command finishes what a kill left undone.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ..rundir import RunDirError
from ..results import RESULTS_FILE, read_status

log = logging.getLogger("transferlab")

Task = Callable[[DictConfig], object]  # run.py's task: a run, or a run of runs


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def parent_overrides(drop: tuple[str, ...] = ()) -> list[str]:
    """The running command's overrides, without those of a key in `drop` or below one (`pipeline.x=1`)."""
    return [o for o in HydraConfig.get().overrides.task
            if not any(override_key(o) == key or override_key(o).startswith(key + ".") for key in drop)]


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / RESULTS_FILE).read_text())


def is_completed(run_dir: Path) -> bool:
    return read_status(Path(run_dir) / RESULTS_FILE) == "completed"


def compose_child(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config `python run.py OVERRIDES hydra.run.dir=RUN_DIR` would get, hydra node included."""
    from hydra import compose

    cfg = compose(config_name=HydraConfig.get().job.config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.job.num = 0
    return cfg


@contextmanager
def current(cfg: DictConfig):
    """HydraConfig (what `${hydra:...}` and the runner read) is the child's while it runs."""
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = saved


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra writes them for a run."""
    out = Path(run_dir) / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(task, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), out / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(cfg.hydra.overrides.task)), out / "overrides.yaml")


def _comparable(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if override_key(o) not in ("ckpt_path", "overwrite"))


def check_same_run(done: list[str], now: list[str], run_dir: Path) -> None:
    """A completed child is reused only when it ran with the overrides this command gives it."""
    if _comparable(done) != _comparable(now):
        changed = sorted(set(_comparable(done)) ^ set(_comparable(now)))
        raise RunDirError(f"{run_dir} holds a completed run of other settings (differing: {' '.join(changed)}); "
                          f"nothing was changed. Choose another hydra.run.dir, or add overwrite=true to run "
                          f"every child again")


def run_child(task: Task, name: str, overrides: list[str], parent_dir: Path) -> dict:
    """Run (or reuse) the child `parent_dir/name`; its results.json."""
    run_dir = Path(parent_dir) / name
    if is_completed(run_dir):
        done = read_results(run_dir)
        check_same_run(done.get("overrides") or [], overrides, run_dir)
        log.info("%s: completed earlier, reused (%s)", name, run_dir)
        return done
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.info("%s: continues from its last checkpoint", name)
        overrides = [*overrides, "ckpt_path=last"]
    log.info("%s: %s", name, " ".join(overrides))
    cfg = compose_child(overrides, run_dir)
    with current(cfg):
        save_hydra_files(cfg, run_dir)
        with open_dict(cfg):
            del cfg.hydra
        task(cfg)
    return read_results(run_dir)
