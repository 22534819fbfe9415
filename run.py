"""transferlab's one entry point.

    python run.py                                   # main job (pipeline=main): a method beside its baseline
    python run.py model=<method> data=<dataset> trainer=<cpu|gpu|ddp|ddp_cpu> amp=<fp32|fp16|bf16>

compose -> validate -> seed -> build DataModule, LightningModule, callbacks, loggers, Trainer ->
fit -> test -> write results.json atomically -> return the optimized metric (for sweepers).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("TRANSFERLAB_ROOT", str(ROOT))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import CompactHydraException, InstantiationException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from hydra.utils import get_class, instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from datamodules.errors import USER_ERRORS, ConfigError, DataFormatError, DataNotFoundError  # noqa: E402
from lightning_modules.callbacks import FaultTolerance, interrupt_exit_code, is_interrupt  # noqa: E402
from lightning_modules.components.encoder_io import save_encoder  # noqa: E402
from lightning_modules.components.safe_load import SafeCheckpointIO, check_resume_fits, safe_load  # noqa: E402
from lightning_modules.evaluation.embedding_plot import wait_for_plots  # noqa: E402
from lightning_modules.protocols import protocol_of  # noqa: E402
from lightning_modules.protocols.crossval import check_cv, fold_option  # noqa: E402
from lightning_modules.protocols.optuna_search import is_pruned, pruning_callbacks  # noqa: E402
from lightning_modules.rundir import claim_run_dir  # noqa: E402
from lightning_modules.runtime import (  # noqa: E402
    RESULTS_FILE, git_commit, is_rank_zero, library_versions, machine, metrics_table, scalar_metrics, write_results,
)

log = logging.getLogger("transferlab")

# Keys of a model config that the runner reads; everything else goes to the module's constructor.
RUNNER_KEYS = ("datamodule", "input", "optimized_metric", "compile", "channels_last")  # the last two: speed switches


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


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


# ------------------------------------------------------------------------------------------------
# build


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


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = instantiate(cfg.model.datamodule, **datamodule_options(cfg), _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_module(cfg: DictConfig, data_info: dict) -> pl.LightningModule:
    """Instantiate the method, handing it what only the data knows (classes, channels, size)."""
    import inspect

    model = OmegaConf.to_container(cfg.model, resolve=True)
    module_cfg = {k: v for k, v in model.items() if k not in RUNNER_KEYS}
    # Options holding a `_target_` (optimizer, scheduler) reach the module as plain dicts, not instantiated:
    # the method builds them (BaseMethod.configure_optimizers), so its saved hyperparameters hold no callables
    # and every checkpoint loads with torch.load(weights_only=True).
    plain = {k: module_cfg.pop(k) for k in list(module_cfg)
             if k != "_target_" and isinstance(module_cfg[k], dict) and "_target_" in module_cfg[k]}
    accepted = inspect.signature(get_class(module_cfg["_target_"]).__init__).parameters
    extra = {k: v for k, v in data_info.items() if k in accepted and k not in module_cfg}
    try:
        module = instantiate(module_cfg, **extra, _convert_="partial", _partial_=True)(**plain)
    except InstantiationException as err:
        # Hydra wraps constructor errors; surface ours (they name the option) as they are.
        if isinstance(err.__cause__, (ConfigError, DataFormatError, DataNotFoundError)):
            raise err.__cause__ from None
        raise
    if hasattr(module, "speed_options"):  # model.compile / model.channels_last (lightning_modules/base.py)
        module.speed_options(compile=model.get("compile") or False, channels_last=model.get("channels_last") or False)
    return module


def build_all(cfg: DictConfig, group: str) -> list:
    return [instantiate(node, _convert_="partial") for node in (cfg.get(group) or {}).values() if node is not None]


def cluster_plugins(cfg: DictConfig) -> list:
    """On SLURM: Lightning's auto-requeue (save `hpc_ckpt_N.ckpt` in the run dir, `scontrol requeue`) on the
    signal submitit asks SLURM to send before the time limit; the requeued job resumes from that file."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # what submitit's sbatch --signal sends
    requeue_signal = getattr(signal, f"SIG{name.removeprefix('SIG')}")
    if cfg.get("auto_requeue", True):
        signal.signal(requeue_signal, signal.SIG_DFL)  # submitit's own handler would keep Lightning's off
    return [SLURMEnvironment(auto_requeue=cfg.get("auto_requeue", True), requeue_signal=requeue_signal)]


def discard_hpc_checkpoints(trainer: pl.Trainer) -> None:
    """After a finished fit, so `trainer.test` on SLURM tests the trained weights, not a requeue snapshot.
    Only snapshots this job wrote or resumed from (read safely) are removed; any other file is left in place."""
    if trainer.is_global_zero:
        trusted = getattr(trainer.strategy.checkpoint_io, "trusted", set())
        for stale in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
            if str(stale) in trusted:
                stale.unlink()
            else:
                log.warning("%s was neither written nor resumed from by this job: left in place", stale)
    trainer.strategy.barrier("discard_hpc_checkpoints")


def prepare_wandb(cfg: DictConfig) -> None:
    """wandb: one run per job named by its overrides, one group per sweep, and the run id kept in
    `<run dir>/wandb_id.txt` so a resumed run (ckpt_path=last, a requeued job) continues the same run."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    wandb_offline_without_network(node)
    hydra_cfg = HydraConfig.get()
    id_file = output_dir() / "wandb_id.txt"
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
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def record_precision(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Lightning swaps a precision the device cannot run (fp16 on a CPU runs as bf16-mixed); the config
    that results.json records then says what ran, not what was asked."""
    ran, asked = str(trainer.precision), str(cfg.trainer.precision)
    if ran != asked:
        log.warning("trainer.precision=%s cannot run on %s; it runs as %s, and results.json records %s "
                    "(amp=bf16 or amp=fp32 asks for it directly)", asked, cfg.trainer.accelerator, ran, ran)
        cfg.trainer.precision = ran
        cfg.amp.precision = ran


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


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list,
                  checkpoint_io: SafeCheckpointIO | None = None) -> pl.Trainer:
    """`checkpoint_io`: every checkpoint Lightning reads (ckpt_path, a SLURM requeue snapshot) goes
    through safe_load (weights_only=True); every one it writes is written whole
    (a temporary file, then renamed)."""
    plugins = [*cluster_plugins(cfg), checkpoint_io or SafeCheckpointIO()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial", plugins=plugins)


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
    ckpt_option = f"ckpt_path={cfg.get('ckpt_path')}"
    checkpoint = read_checkpoint(ckpt_path, ckpt_option)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.data_info)
    if checkpoint is not None:
        check_resume_fits(module, checkpoint, ckpt_option, ckpt_path)
    checkpoint_io = SafeCheckpointIO(options={ckpt_path: ckpt_option} if ckpt_path else {},
                                     preloaded={ckpt_path: checkpoint} if ckpt_path else {})
    del checkpoint  # Lightning frees the handed-over copy once it has restored from it
    prepare_wandb(cfg)
    loggers = build_all(cfg, "logger")
    callbacks = build_all(cfg, "callbacks") + [FaultTolerance(output_dir() / "checkpoints"), *pruning_callbacks(cfg)]
    trainer = build_trainer(cfg, callbacks, loggers, checkpoint_io)
    record_precision(cfg, trainer)
    for logger in loggers:  # the resolved config, on every dashboard
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        discard_hpc_checkpoints(trainer)
        metrics.update(scalar_metrics(trainer.callback_metrics))
    optimized = metrics.get(cfg.model.get("optimized_metric") or "")
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=None if cfg.get("train", True) else ckpt_path)
        metrics.update(scalar_metrics(trainer.callback_metrics))

    wait_for_plots()  # t-SNE maps drawn in the background during training and testing
    if trainer.is_global_zero:
        if hasattr(module, "backbone"):
            save_encoder(module.backbone, output_dir() / "encoder.pt", datamodule.data_info,
                         head=getattr(module, "classifier", None))
        status = "interrupted" if trainer.interrupted else "completed"
        # What the backbone's weights expect of the input (lightning_modules/components/pretrained.py).
        norm = getattr(getattr(module, "backbone", None), "input_normalization", None)
        extra = {"input_normalization": norm} if norm is not None else {}
        if getattr(module, "model_selection", None) is not None:  # domain adaptation: the pick and the upper bound
            extra["model_selection"] = module.model_selection
        write_results(output_dir() / RESULTS_FILE, results_payload(cfg, status, metrics, started, **extra))
        print(f"\n{metrics_table(metrics)}\n\nrun dir: {output_dir()}")
    return metrics, optimized


def run_of_runs(protocol) -> Callable[[DictConfig], tuple[dict[str, float], float | None]]:
    """train() for a run made of runs (lightning_modules/protocols): the children run through `task`, then
    the parent's results.json (completed) gets their summary."""

    def body(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
        started = time.time()
        outcome = protocol(cfg, task)
        if is_rank_zero():
            write_results(output_dir() / RESULTS_FILE,
                          results_payload(cfg, "completed", outcome.metrics, started, **outcome.extra))
            print(f"\n{outcome.text}")
        return outcome.metrics, outcome.optimized

    return body


def task(cfg: DictConfig) -> float | None:
    """One command's work: a run, or a run of runs (k folds, a pipeline, an Optuna study), whose children
    come back here."""
    protocol = protocol_of(cfg)
    return run(cfg, train if protocol is None else run_of_runs(protocol))


def run(cfg: DictConfig, body: Callable = train) -> float | None:
    """train() with bookkeeping: the run dir is checked and locked first (lightning_modules/rundir.py);
    results.json says `failed` or `interrupted` when the run did not complete, unless it holds a completed
    run, which is kept. Ctrl-C exits with status 130, SIGTERM 143.
    In a sweep (-m) Hydra records a job's exception and runs the other jobs (the basic sweeper raises it
    once they are done, so the command still exits non-zero; the Optuna presets mark the trial failed and
    go on); the sweep summary lists it. Ctrl-C and SIGTERM stop the sweep."""
    started = time.time()
    with claim_run_dir(output_dir(), cfg.get("ckpt_path"), bool(cfg.get("overwrite"))):
        try:
            _, optimized = body(cfg)
        except BaseException as err:
            code = interrupt_exit_code(err)
            status = "interrupted" if is_interrupt(err) else "pruned" if is_pruned(err) else "failed"
            finish_wandb(exit_code=1)
            if is_rank_zero():
                error = INTERRUPTS.get(code) or f"{type(err).__name__}: {err}"
                write_results(output_dir() / RESULTS_FILE, results_payload(cfg, status, {}, started, error=error))
            if isinstance(err, (ConfigError, MissingMandatoryValue)):
                log.error("%s", err)
            if status == "failed" and in_sweep():
                log.error("job %s failed; the other jobs of the sweep go on", output_dir(), exc_info=err)
            if code is not None:
                if is_rank_zero():
                    print(interrupt_message(code, of_runs=body is not train), file=sys.stderr)
                raise SystemExit(code) from None
            raise
    if optimized is None and in_sweep():
        log.warning("optimized_metric=%s was not logged; a sweeper that needs it fails this job",
                    cfg.model.get("optimized_metric"))
    finish_wandb(exit_code=0)
    return optimized


class ReportedError(CompactHydraException):
    """An error whose message says what to fix: Hydra prints it as one line and exits with status 1."""


INTERRUPTS = {130: "interrupted by Ctrl-C (SIGINT)", 143: "interrupted by SIGTERM"}


def interrupt_message(code: int, of_runs: bool = False) -> str:
    if of_runs:
        return (f"{INTERRUPTS[code]}: rerun the same command to go on; its finished runs are reused and an "
                f"unfinished one continues from its last checkpoint")
    last = output_dir() / "checkpoints" / "last.ckpt"
    then = (f"rerun the same command with ckpt_path=last to continue from {last}" if last.is_file()
            else "no checkpoint was saved yet, so a rerun starts from the beginning")
    return f"{INTERRUPTS[code]}: {then}"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return task(cfg)
    except (*USER_ERRORS, MissingMandatoryValue) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the whole traceback, as Hydra shows it for any error
        raise ReportedError(f"Error: {err}") from None


# Command-line forms of earlier versions, and what replaced them (checked before Hydra composes).
DA_PROTOCOLS = {"digits": "digits_digits_m", "mnist_usps": "mnist_usps", "usps_mnist": "usps_mnist",
                "mnist_mnistm": "mnist_mnistm", "svhn_mnist": "svhn_mnist"}
DA_METHODS = ("source_only", "target_oracle", "dann", "adda", "drcn", "dan", "coral")
SSL_PROTOCOLS = ("mnist", "mnist_m", "digits_m", "cifar10", "stl10")
SSL_METHODS = ("simclr", "moco", "rotation")


def legacy_form_error(args: list[str]) -> str | None:
    """The new form of an option that an earlier version took, or None."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key.startswith("model.datamodule.") and key != "model.datamodule._target_":
            return f"{key} is now data.{key.removeprefix('model.datamodule.')} (every DataModule option lives under data)"
        if key != "experiment":
            continue
        for method in DA_METHODS + SSL_METHODS:
            protocol = value.removeprefix(f"{method}_")
            if protocol == value:
                continue
            new = DA_PROTOCOLS.get(protocol) if method in DA_METHODS else (
                f"ssl_{protocol}" if protocol in SSL_PROTOCOLS else None)
            if new:
                return (f"experiment={value} is now experiment={new} model={method} "
                        f"(a protocol preset combines with any method of its kind)")
    return None


MAIN_JOB = "pipeline=main"  # conf/pipeline/main.yaml: what `python run.py` with no arguments runs


def command_line(args: list[str]) -> list[str]:
    """The arguments Hydra gets: the main job for none, any other command line as it is (a single run)."""
    return args or [MAIN_JOB]


if __name__ == "__main__":
    sys.argv[1:] = command_line(sys.argv[1:])
    legacy = legacy_form_error(sys.argv[1:])
    if legacy:
        print(f"error: {legacy}", file=sys.stderr)
        sys.exit(2)
    main()
