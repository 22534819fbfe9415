"""Config -> the objects of a run: checked options, DataModule, LightningModule, callbacks, loggers, Trainer.

Everything here fails early, before any data is loaded, when the configuration cannot work, with an error
naming the option and its valid choices."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.errors import ConfigError, DataFormatError, DataNotFoundError
from lightning_modules.components.safe_load import SafeCheckpointIO, safe_load

from .context import output_dir
from .protocols.crossval import check_cv, fold_option
from .slurm import cluster_plugins

log = logging.getLogger("transferlab")

# Keys of a model config that the runner reads; everything else goes to the module's constructor.
RUNNER_KEYS = ("datamodule", "input", "optimized_metric", "compile", "channels_last")  # the last two: speed switches


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
            f"data={choices.get('data')} is {'several domains' if 'domains' in cfg.data else 'a single dataset'}; use data=pair data.source.name=... "
            f"data.target.name=..., or a preset such as data=digits_to_digits_m"
        )
    if kind == "single" and "dataset" not in cfg.data:
        raise ConfigError(
            f"model={choices.get('model')} trains on one dataset but data={choices.get('data')} is "
            f"{'a domain pair' if has_pair else 'several domains'}; choose a single dataset, e.g. data=digits"
        )
    if kind == "multi" and "domains" not in cfg.data:
        raise ConfigError(
            f"model={choices.get('model')} trains on several labeled domains but data={choices.get('data')} is not "
            f"a multi-domain config; use data=rotated_mnist, or data=multi with data.domains and data.test_domain"
        )
    check_trainer(cfg.trainer, choices.get("trainer"))
    check_cv(cfg, kind)


# Trainer options Lightning only asserts on (a bare AssertionError deep in its loops).
_TRAINER_INTS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "log_every_n_steps", "num_nodes",
                 "check_val_every_n_epoch", "num_sanity_val_steps", "accumulate_grad_batches")
_TRAINER_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "val_check_interval")


def check_trainer(trainer: DictConfig, choice: str | None) -> None:
    """Numbers that are numbers, and an accelerator this machine has."""
    for key in _TRAINER_INTS + _TRAINER_LIMITS:
        value = trainer.get(key)
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        if key in _TRAINER_LIMITS:
            ok = ok or isinstance(value, float)
        if not ok:
            kind = "an integer" if key in _TRAINER_INTS else "an integer (batches) or a float (fraction)"
            raise ConfigError(f"trainer.{key}={value!r} must be {kind}, e.g. trainer.{key}=10")
    if str(trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} (trainer={choice}) but this machine has no CUDA device "
            f"(torch.cuda.is_available() is False); use trainer=cpu (or trainer=ddp_cpu)"
        )


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    path = output_dir() / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir=<an existing run dir>)" if ckpt_path == "last" else ""
        raise ConfigError(f"ckpt_path={ckpt_path}: {path} does not exist{hint}")
    return str(path)


def read_checkpoint(ckpt_path: str | None, option: str) -> dict | None:
    """The resume/test checkpoint, read (weights_only=True) before any data is loaded, so a refused, truncated
    or foreign file fails at once; Lightning then gets this copy (SafeCheckpointIO) instead of a second read."""
    return safe_load(ckpt_path, option) if ckpt_path else None


def init_parameters(cls: type) -> set[str]:
    """Keyword arguments a class takes, through `**kwargs` handed to its bases."""
    import inspect

    return {name for klass in cls.__mro__ if "__init__" in vars(klass)
            for name, p in inspect.signature(klass.__init__).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"}


def datamodule_options(cfg: DictConfig) -> dict:
    """`data.*` as the DataModule's arguments. data.image_size null = the size the backbone declares
    (LeNet 28, a pretrained net its weights' size), for single datasets and pairs alike; options of another
    batch shape left at null are dropped, set ones are an error naming the DataModule's options."""
    from lightning_modules.components.backbones import declared_input_size

    data = OmegaConf.to_container(cfg.data, resolve=True)
    backbone = cfg.model.get("backbone") or {}
    if data.get("image_size") is None and backbone.get("name"):
        data["image_size"] = declared_input_size(backbone.name, bool(backbone.get("pretrained")))
    if fold_option(cfg) is not None:
        data["fold"] = fold_option(cfg)
    dm_class = get_class(cfg.model.datamodule._target_)
    accepted = init_parameters(dm_class)
    unknown = sorted(key for key, value in data.items() if key not in accepted and value is not None)
    if unknown:
        choices = HydraConfig.get().runtime.choices
        raise ConfigError(f"data.{unknown[0]} is not an option of model={choices.get('model')} "
                          f"({dm_class.__name__}); its data options: {', '.join(sorted(accepted))}")
    return {key: value for key, value in data.items() if key in accepted}


@contextlib.contextmanager
def constructor_errors_unwrapped():
    """Hydra wraps an error raised in a constructor; ours (they name the option) surface as they are."""
    try:
        yield
    except InstantiationException as err:
        if isinstance(err.__cause__, (ConfigError, DataFormatError, DataNotFoundError)):
            raise err.__cause__ from None
        raise


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    with constructor_errors_unwrapped():
        datamodule = instantiate(cfg.model.datamodule, **datamodule_options(cfg), _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_module(cfg: DictConfig, data_info: dict) -> pl.LightningModule:
    """Instantiate the method, handing it what only the data knows (classes, channels, size)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    module_cfg = {k: v for k, v in model.items() if k not in RUNNER_KEYS}
    # Options holding a `_target_` (optimizer, scheduler) reach the module as plain dicts, not instantiated:
    # the method builds them (BaseMethod.configure_optimizers), so its saved hyperparameters hold no callables
    # and every checkpoint loads with torch.load(weights_only=True).
    plain = {k: module_cfg.pop(k) for k in list(module_cfg)
             if k != "_target_" and isinstance(module_cfg[k], dict) and "_target_" in module_cfg[k]}
    accepted = init_parameters(get_class(module_cfg["_target_"]))  # through **kwargs handed to its bases
    extra = {k: v for k, v in data_info.items() if k in accepted and k not in module_cfg}
    with constructor_errors_unwrapped():
        module = instantiate(module_cfg, **extra, _convert_="partial", _partial_=True)(**plain)
    if hasattr(module, "speed_options"):  # model.compile / model.channels_last (lightning_modules/base.py)
        module.speed_options(compile=model.get("compile") or False, channels_last=model.get("channels_last") or False)
    return module


def build_all(cfg: DictConfig, group: str) -> list:
    return [instantiate(node, _convert_="partial") for node in (cfg.get(group) or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list,
                  checkpoint_io: SafeCheckpointIO | None = None) -> pl.Trainer:
    """`checkpoint_io`: every checkpoint Lightning reads (ckpt_path, a SLURM requeue snapshot) goes
    through safe_load (weights_only=True); every one it writes is written whole
    (a temporary file, then renamed)."""
    plugins = [*cluster_plugins(cfg), checkpoint_io or SafeCheckpointIO()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial", plugins=plugins)


def record_precision(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Lightning swaps a precision the device cannot run (fp16 on a CPU runs as bf16-mixed); the config
    that results.json records then says what ran, not what was asked."""
    ran, asked = str(trainer.precision), str(cfg.trainer.precision)
    if ran != asked:
        log.warning("trainer.precision=%s cannot run on %s; it runs as %s, and results.json records %s "
                    "(amp=bf16 or amp=fp32 asks for it directly)", asked, cfg.trainer.accelerator, ran, ran)
        cfg.trainer.precision = ran
        cfg.amp.precision = ran
