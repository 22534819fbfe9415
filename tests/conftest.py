"""Shared fixtures: the real data in ../shared/data, and a runner for `run.py` in-process or as a command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Decoded image folders (data.cache=auto) go to a cache of this test session, not the user's ~/.cache; the
# subprocess runs of run.py inherit it.
os.environ.setdefault("TRANSFERLAB_CACHE_DIR", tempfile.mkdtemp(prefix="transferlab-test-cache-"))

# Keep CPU tests predictable on small machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped in a user's clone without it, but an error under CI=true."""
    if not (SHARED_DATA / "mnist_test.npz").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SHARED_DATA} is missing under CI=true; tests that need it must not be skipped there")
        pytest.skip(f"real data not found in {SHARED_DATA} (see README, 'Real data')")
    return SHARED_DATA


def run_cli(*overrides: str, run_dir: Path | None = None, timeout: int = 600, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py OVERRIDES... hydra.run.dir=RUN_DIR` as a subprocess (the way users call it)."""
    args = [sys.executable, str(ROOT / "run.py"), *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def cli():
    return run_cli


CONF_DIR = ROOT / "conf"


def compose(*overrides: str, run_dir: Path | None = None):
    """Compose conf/config.yaml like `python run.py OVERRIDES` does, with HydraConfig set so
    `${hydra:...}` resolves; the run dir is `run_dir`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir or ROOT / "outputs" / "test")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def train_in_process(*overrides: str, run_dir: Path):
    """run.py's train() on a composed config, in this process (fast smoke fits)."""
    import run

    cfg = compose(*overrides, run_dir=run_dir)
    return run.train(cfg)
