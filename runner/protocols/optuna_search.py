"""Hyperparameter search with pruning: an Optuna (4.x) study driven by ask-and-tell.

    python run.py hparams_search=dann_optuna optuna.trials=12 optuna.storage=sqlite:///outputs/dann.db

Each trial is a normal run dir `<run dir>/trial<NNN>` (the run with the trial's parameters as overrides and
`optuna.trial=<number>`). While it trains, `PruneTrial` reports the optimised metric to the trial after every
validation and stops the run when the pruner (median, successive halving, ...) says so: the trial is told
PRUNED, its results.json says `pruned`. The study lives in `optuna.storage` (default: `optuna.db` in the run
dir), so a second command with the same storage continues it until it holds `optuna.trials` finished
trials (complete, pruned or failed); trials a killed command left running are not counted and not resumed.
Why not Hydra's Optuna sweeper: its releases (up to 1.3.0) require optuna<3 (so SQLAlchemy<2 for sqlite)
and give the objective no access to the trial, so nothing can prune.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.errors import ConfigError

from . import Outcome
from .children import Task, parent_overrides, run_child

log = logging.getLogger("transferlab")

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
_running: dict[int, object] = {}  # trial number -> optuna.Trial of the trial this process is running


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("optuna.trials needs Optuna 4: pip install -e '.[optuna]'") from None
    if int(optuna.__version__.split(".")[0]) < 4:
        raise ConfigError(f"optuna.trials needs Optuna >= 4 (found {optuna.__version__}): pip install -e '.[optuna]'")
    return optuna


# -- the search space ------------------------------------------------------------------------------------


def suggest(trial, params: dict) -> dict:
    """option -> value for every `optuna.params` entry: {low, high[, log][, step]} (a float, or an int with
    int: true) or {choices: [...]}."""
    values = {}
    for key, spec in params.items():
        spec = dict(spec or {})
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif {"low", "high"} <= set(spec):
            kind = trial.suggest_int if spec.get("int") else trial.suggest_float
            values[key] = kind(key, spec["low"], spec["high"], log=bool(spec.get("log", False)),
                               **({"step": spec["step"]} if spec.get("step") else {}))
        else:
            raise ConfigError(f"optuna.params.{key}={spec}: give {{low: L, high: H}} (with log: true for a log "
                              f"scale, int: true for integers) or {{choices: [a, b, ...]}}")
    return values


def override_value(value) -> str:
    return "null" if value is None else str(value)


# -- inside a trial's run ----------------------------------------------------------------------------


class PruneTrial(pl.Callback):
    """Reports `metric` to the Optuna trial after each validation (step = epoch) and prunes the run."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {trainer.current_epoch}: {self.metric}={value:.4f}")


def pruning_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """What run.py adds to a trial's callbacks (none outside a study)."""
    number = (cfg.get("optuna") or {}).get("trial")
    if number is None:
        return []
    if number not in _running:
        raise ConfigError(f"optuna.trial={number} is set by the study that runs the trial; leave it out")
    return [PruneTrial(_running[number], objective(cfg))]


def objective(cfg: DictConfig) -> str:
    metric = cfg.optuna.get("metric") or cfg.model.get("optimized_metric")
    if not metric:
        raise ConfigError("optuna: no metric to optimise; set optuna.metric or model.optimized_metric")
    return metric


def is_pruned(err: BaseException) -> bool:
    return type(err).__name__ == "TrialPruned"


# -- the study -------------------------------------------------------------------------------------------


def open_study(cfg: DictConfig, parent: Path):
    optuna = import_optuna()
    spec = cfg.optuna
    storage = spec.get("storage") or f"sqlite:///{parent / 'optuna.db'}"
    choices = HydraConfig.get().runtime.choices
    name = spec.get("study_name") or f"{choices.get('model')}_{choices.get('data')}"
    sampler = instantiate(spec.sampler) if spec.get("sampler") else None
    pruner = instantiate(spec.pruner) if spec.get("pruner") else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.get("direction") or "maximize", load_if_exists=True)
    return study, storage


def run_trial(task: Task, study, params: dict, base: list[str], parent: Path, metric: str):
    """Ask for a trial, run it as a child, tell the study how it ended."""
    import optuna

    trial = study.ask()
    values = suggest(trial, params)
    name = f"trial{trial.number:03d}"
    trial.set_user_attr("run_dir", str(parent / name))
    overrides = [*base, *(f"{k}={override_value(v)}" for k, v in values.items()), f"optuna.trial={trial.number}"]
    _running[trial.number] = trial
    try:
        results = run_child(task, name, overrides, parent)
    except optuna.TrialPruned as err:
        log.info("%s pruned: %s", name, err)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return
    except Exception as err:  # a failed trial: the study goes on
        log.error("%s failed: %s", name, err)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    finally:
        _running.pop(trial.number, None)
    value = (results.get("metrics") or {}).get(metric)
    if value is None:
        log.error("%s logged no %s: marked FAIL", name, metric)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, float(value))


def trial_rows(study) -> list[dict]:
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "last_epoch": max(t.intermediate_values) if t.intermediate_values else None,
             "dir": t.user_attrs.get("run_dir")} for t in study.trials]


def render(rows: list[dict], study, metric: str, storage: str) -> str:
    import optuna

    lines = [f"# Optuna study `{study.study_name}` (Optuna {optuna.__version__}, storage {storage})", "",
             f"objective: {study.direction.name.lower()} {metric}; "
             + ", ".join(f"{sum(r['state'] == s for r in rows)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")),
             "", "| trial | state | value | last epoch reported | parameters |", "|---|---|---|---|---|"]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['number']} | {r['state'].lower()} | {value} | {r['last_epoch'] if r['last_epoch'] is not None else '-'} | `{params}` |")
    pruned = [str(r["number"]) for r in rows if r["state"] == "PRUNED"]
    lines += ["", f"pruned trials: {', '.join(pruned) or 'none'}"]
    if any(r["state"] == "COMPLETE" for r in rows):
        best = study.best_trial
        lines += [f"best trial: {best.number}, {metric}={best.value:.4f}, "
                  + " ".join(f"{k}={v}" for k, v in best.params.items())]
    return "\n".join(lines) + "\n"


def run_study(cfg: DictConfig, task: Task) -> Outcome:
    parent = Path(HydraConfig.get().runtime.output_dir)
    parent.mkdir(parents=True, exist_ok=True)
    study, storage = open_study(cfg, parent)
    trials, metric = int(cfg.optuna.trials), objective(cfg)
    params = OmegaConf.to_container(cfg.optuna.params, resolve=True) or {}
    if not params:
        raise ConfigError("optuna.params is empty: name the options to search, e.g. "
                          "optuna.params={model.optimizer.lr: {low: 1e-4, high: 1e-1, log: true}}")
    base = parent_overrides(drop=("optuna.trial", "ckpt_path", *params))
    finished = sum(t.state.name in FINISHED for t in study.trials)
    if finished:
        log.info("study %s holds %d finished trial(s); %d to run", study.study_name, finished, max(0, trials - finished))
    while sum(t.state.name in FINISHED for t in study.trials) < trials:
        run_trial(task, study, params, base, parent, metric)
    rows = trial_rows(study)
    text = render(rows, study, metric, storage)
    (parent / "study.md").write_text(text)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = study.best_trial if complete else None
    extra = {"children": "trials", "study": study.study_name, "storage": storage, "trials": rows,
             "best": {"number": best.number, "value": best.value, "params": best.params} if best else None}
    metrics = {metric: best.value} if best else {}
    return Outcome(metrics, best.value if best else None, extra, text)
