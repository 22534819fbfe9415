"""transferlab's one entry point.

    python run.py                                   # main job (pipeline=main): a method beside its baseline
    python run.py model=<method> data=<dataset> trainer=<cpu|gpu|ddp|ddp_cpu> amp=<fp32|fp16|bf16>

compose (Hydra) -> validate -> seed -> build DataModule, LightningModule, callbacks, loggers, Trainer ->
fit -> test -> encoder.pt and results.json -> return the optimized metric (for sweepers).
Each step's details live in the runner package (runner/__init__.py lists where).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("TRANSFERLAB_ROOT", str(ROOT))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra.errors import CompactHydraException  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

from datamodules.errors import USER_ERRORS, ConfigError  # noqa: E402
from lightning_modules.components.safe_load import SafeCheckpointIO, check_resume_fits  # noqa: E402
from lightning_modules.evaluation.embedding_plot import wait_for_plots  # noqa: E402
from runner.build import (  # noqa: E402
    build_all, build_datamodule, build_module, build_trainer, read_checkpoint, record_precision, resolve_ckpt_path,
    validate,
)
from runner.context import in_sweep, output_dir  # noqa: E402
from runner.encoder_export import export_encoder  # noqa: E402
from runner.fault_tolerance import FaultTolerance, interrupt_exit_code, is_interrupt  # noqa: E402
from runner.protocols import protocol_of  # noqa: E402
from runner.protocols.optuna_search import is_pruned, pruning_callbacks  # noqa: E402
from runner.results import RESULTS_FILE, is_rank_zero, metrics_table, results_payload, scalar_metrics, write_results  # noqa: E402,E501
from runner.rundir import claim_run_dir  # noqa: E402
from runner.slurm import discard_hpc_checkpoints  # noqa: E402
from runner.wandb_run import finish_wandb, prepare_wandb  # noqa: E402

log = logging.getLogger("transferlab")


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
        export_encoder(module, datamodule.data_info, output_dir())
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
    """train() for a run made of runs (runner/protocols): the children run through `task`, then
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
    """train() with bookkeeping: the run dir is checked and locked first (runner/rundir.py);
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
