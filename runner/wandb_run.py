"""wandb: one run per job named by its overrides, one group per sweep, and the run id kept in
`<run dir>/wandb_id.txt` so a resumed run (ckpt_path=last, a requeued job) continues the same run."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .context import in_sweep, output_dir
from .results import is_rank_zero

log = logging.getLogger("transferlab")

ID_FILE = "wandb_id.txt"


def prepare_wandb(cfg: DictConfig) -> None:
    """Fill `logger.wandb`'s id, resume, name and group before the logger is built (no-op without wandb)."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    wandb_offline_without_network(node)
    hydra_cfg = HydraConfig.get()
    id_file = output_dir() / ID_FILE
    if node.get("id"):
        run_id = node.id
    elif id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        import uuid

        run_id = uuid.uuid4().hex[:8]
    if is_rank_zero():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.", "logger"))]
    choices = hydra_cfg.runtime.choices
    with open_dict(node):
        node.id = run_id
        node.resume = node.get("resume") or "allow"
        node.name = node.get("name") or (",".join(overrides) or f"{choices.get('model')}-{choices.get('data')}")
        node.group = node.get("group") or (Path(hydra_cfg.sweep.dir).name if in_sweep()
                                           else f"{choices.get('model')}-{choices.get('data')}")


def finish_wandb(exit_code: int) -> None:
    """Close this job's wandb run, so the next job of an in-process sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Whether wandb's server (WANDB_BASE_URL) answers a TCP connection within `timeout_s`."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
        return True
    except OSError:
        return False


def wandb_offline_without_network(node: DictConfig) -> None:
    """wandb waits ~2 minutes for a server it cannot reach; a quick probe sends it offline at once."""
    if node.get("offline") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    if not wandb_reachable():
        log.warning("wandb: %s is unreachable; logging offline into the run dir (sync later with `wandb sync`; "
                    "WANDB_MODE=offline or logger.wandb.offline=true skips this check)",
                    os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        with open_dict(node):
            node.offline = True
