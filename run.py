"""transferlab's one entry point.

    python run.py                                   # main job: embedded data, CPU, no download
    python run.py model=<method> data=<dataset> trainer=<cpu|gpu|ddp|ddp_cpu> amp=<fp32|fp16|bf16>

compose -> validate -> seed -> build DataModule, LightningModule, callbacks, loggers, Trainer ->
fit -> test -> write results.json atomically -> return the optimized metric (for sweepers).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("TRANSFERLAB_ROOT", str(ROOT))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import get_class, instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from datamodules.errors import ConfigError  # noqa: E402
from lightning_modules.components.encoder_io import save_encoder  # noqa: E402
from lightning_modules.runtime import (  # noqa: E402
    RESULTS_FILE, git_commit, library_versions, machine, metrics_table, scalar_metrics, write_json_atomic,
)

log = logging.getLogger("transferlab")

# Keys of a model config that the runner reads; everything else goes to the module's constructor.
RUNNER_KEYS = ("datamodule", "input", "optimized_metric")


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


# ------------------------------------------------------------------------------------------------
# validate


def validate(cfg: DictConfig) -> None:
    """Fail before any data is loaded when the configuration cannot work."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"these options need a value on the command line: {', '.join(missing)}")
    choices = HydraConfig.get().runtime.choices
    dm_class = get_class(cfg.model.datamodule._target_)
    kind = getattr(dm_class, "data_kind", "single")
    has_pair = "source" in cfg.data or "target" in cfg.data
    if kind == "pair" and not has_pair:
        raise ConfigError(
            f"model={choices.get('model')} needs a domain pair (labeled source, unlabeled target) but "
            f"data={choices.get('data')} is a single dataset; use data=pair data.source.name=... "
            f"data.target.name=..., or a preset such as data=digits_to_digits_m"
        )
    if kind == "single" and "dataset" not in cfg.data:
        raise ConfigError(
            f"model={choices.get('model')} trains on one dataset but data={choices.get('data')} is a "
            f"domain pair; choose a single dataset, e.g. data=digits"
        )


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    path = output_dir() / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir=<an existing run dir>)" if ckpt_path == "last" else ""
        raise ConfigError(f"ckpt_path={ckpt_path}: {path} does not exist{hint}")
    return str(path)


# ------------------------------------------------------------------------------------------------
# build


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = instantiate(cfg.model.datamodule, **data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_module(cfg: DictConfig, data_info: dict) -> pl.LightningModule:
    """Instantiate the method, handing it what only the data knows (classes, channels, size)."""
    import inspect

    model = OmegaConf.to_container(cfg.model, resolve=True)
    module_cfg = {k: v for k, v in model.items() if k not in RUNNER_KEYS}
    accepted = inspect.signature(get_class(module_cfg["_target_"]).__init__).parameters
    extra = {k: v for k, v in data_info.items() if k in accepted and k not in module_cfg}
    return instantiate(module_cfg, **extra, _convert_="partial")


def build_all(cfg: DictConfig, group: str) -> list:
    return [instantiate(node, _convert_="partial") for node in (cfg.get(group) or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> pl.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial")


# ------------------------------------------------------------------------------------------------
# run


def results_payload(cfg: DictConfig, status: str, metrics: dict, started: float, **extra) -> dict:
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


def train(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    started = time.time()
    validate(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"))
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.data_info)
    trainer = build_trainer(cfg, build_all(cfg, "callbacks"), build_all(cfg, "logger"))

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(scalar_metrics(trainer.callback_metrics))
    optimized = metrics.get(cfg.model.get("optimized_metric") or "")
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=None if cfg.get("train", True) else ckpt_path)
        metrics.update(scalar_metrics(trainer.callback_metrics))

    if trainer.is_global_zero:
        if hasattr(module, "backbone"):
            save_encoder(module.backbone, output_dir() / "encoder.pt", datamodule.data_info,
                         head=getattr(module, "classifier", None))
        status = "interrupted" if trainer.interrupted else "completed"
        write_json_atomic(output_dir() / RESULTS_FILE, results_payload(cfg, status, metrics, started))
        print(f"\n{metrics_table(metrics)}\n\nrun dir: {output_dir()}")
    return metrics, optimized


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    started = time.time()
    try:
        _, optimized = train(cfg)
    except BaseException as err:
        if is_rank_zero():
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            payload = results_payload(cfg, status, {}, started, error=f"{type(err).__name__}: {err}")
            write_json_atomic(output_dir() / RESULTS_FILE, payload)
        if isinstance(err, (ConfigError, MissingMandatoryValue)):
            log.error("%s", err)
        raise
    return optimized


if __name__ == "__main__":
    main()
