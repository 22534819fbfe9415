"""Shared fixtures: the real data in ../shared/data, and a runner for `run.py` in-process or as a command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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
