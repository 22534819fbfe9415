"""results.json: what every run leaves, written atomically (a reader never sees half of it, and a run that did
not complete never replaces a completed one), with the versions, git commit and machine that made it."""
from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

RESULTS_FILE = "results.json"
ROOT = Path(__file__).resolve().parents[1]  # the repository, for the git commit

log = logging.getLogger("transferlab")


def is_rank_zero() -> bool:
    """The launching process (DDP ranks > 0 re-run run.py with RANK / LOCAL_RANK set)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def write_json_atomic(path: Path, payload: dict) -> Path:
    """Write to a temporary file and rename, so a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def read_status(path: Path) -> str | None:
    """The `status` of a results.json; None when there is none (or it is not one)."""
    try:
        status = json.loads(Path(path).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def write_results(path: Path, payload: dict) -> bool:
    """write_json_atomic, except that a run that did not complete never replaces a completed results.json
    (a resume of a finished run that then fails or is interrupted keeps the finished result)."""
    if payload["status"] != "completed" and read_status(path) == "completed":
        log.warning("kept %s of the earlier completed run; this %s run is not recorded there (%s)",
                    path, payload["status"], payload.get("error", "no error"))
        return False
    write_json_atomic(path, payload)
    return True


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("transferlab", "torch", "torchvision", "pytorch-lightning", "timm", "hydra-core",
                 "omegaconf", "torchmetrics", "numpy", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_commit(root: Path) -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpus": str(os.cpu_count()), "gpu": str(gpu)}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def metrics_table(metrics: dict[str, float]) -> str:
    if not metrics:
        return "(no metrics)"
    width = max(len(k) for k in metrics)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  --------"]
    lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in metrics.items()]
    return "\n".join(lines)


def results_payload(cfg, status: str, metrics: dict, started: float, **extra) -> dict:
    """The content of results.json for the job Hydra is running (`cfg` its composed config)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    return {
        "status": status,
        "metrics": metrics,
        "optimized_metric": cfg.model.get("optimized_metric"),
        "seed": cfg.seed,
        "wall_time_s": round(time.time() - started, 2),
        "overrides": list(HydraConfig.get().overrides.task),
        "config": OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
        "versions": library_versions(),
        "git_commit": git_commit(ROOT),
        "machine": machine(),
        **extra,
    }
