"""Runs made of runs (each child a normal run dir under the parent's, run in this process):

- `crossval`: `cv.folds=K`, K stratified seeded folds, mean and std over them;
- `pipeline`: `pipeline=<name>`, stages in order, each stage's encoder handed to the next by name;
- `optuna_search`: `optuna.trials=N`, an Optuna study (ask-and-tell) whose trials are pruned epoch by epoch.

`protocol_of(cfg)` says which one a configuration asks for (None: a plain run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from omegaconf import DictConfig


@dataclass
class Outcome:
    """What a run of runs reports: its metrics (results.json `metrics`), the optimized one, the rest of its
    results.json (`children` names the kind) and the text printed at the end."""

    metrics: dict[str, float]
    optimized: float | None
    extra: dict = field(default_factory=dict)
    text: str = ""


def protocol_of(cfg: DictConfig) -> Callable | None:
    """The run of runs `cfg` asks for, outermost first: a pipeline, an Optuna study, k folds."""
    protocol = _protocol_of(cfg)
    if protocol is not None and "ddp" in str(cfg.trainer.get("strategy") or ""):
        from datamodules.errors import ConfigError

        raise ConfigError(f"trainer.strategy={cfg.trainer.strategy}: a pipeline, cv.folds and optuna.trials run "
                          f"their runs one after another in this process, which DDP's launcher would start again "
                          f"in every process; use one device (trainer=cpu or trainer=gpu), or run each stage as "
                          f"its own command")
    return protocol


def _protocol_of(cfg: DictConfig) -> Callable | None:
    if cfg.get("pipeline"):
        from .pipeline import run_pipeline

        return run_pipeline
    optuna = cfg.get("optuna") or {}
    if optuna.get("trials") and optuna.get("trial") is None:
        from .optuna_search import run_study

        return run_study
    cv = cfg.get("cv") or {}
    if cv.get("folds") and cv.get("fold") is None:
        from .crossval import run_folds

        return run_folds
    return None
