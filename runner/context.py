"""Hydra's view of the running job: where its artefacts go, and whether it is one job of a sweep."""
from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN
