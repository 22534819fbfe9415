"""k-fold cross-validation for small labeled sets: `cv.folds=K` (stratified, seeded with `cv.seed`).

Fold k is a normal run dir `<run dir>/fold<k>` (the run with `cv.fold=k`: every split the dataset has,
pooled, fold k tests, `data.val_fraction` of the pool validates and the rest trains;
`datamodules.registry.carve_fold`). The parent's results.json holds the mean of each metric over the
folds (`metrics`), their standard deviation (`metrics_std`, n - 1 in the denominator) and every fold's
metrics (`folds`).
"""
from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from datamodules.errors import ConfigError

from ..sweep_summary import mean_std
from . import Outcome
from .children import Task, parent_overrides, run_child


def check_cv(cfg: DictConfig, kind: str) -> None:
    """cv.folds / cv.fold make sense: an integer >= 2, a fold below it, a single labeled dataset."""
    cv = cfg.get("cv") or {}
    folds, fold = cv.get("folds"), cv.get("fold")
    if folds is None:
        if fold is not None:
            raise ConfigError(f"cv.fold={fold} needs cv.folds (e.g. cv.folds=5)")
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"cv.folds={folds!r} must be an integer >= 2 (or null: no cross-validation)")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds):
        raise ConfigError(f"cv.fold={fold!r} must be one of 0..{folds - 1} (cv.folds={folds})")
    if kind != "single":
        raise ConfigError("cv.folds splits one labeled dataset into folds; this model takes a domain pair "
                          "(data.source / data.target), which it cannot fold")


def fold_option(cfg: DictConfig) -> dict | None:
    """What the DataModule gets as `fold` (datamodules.base.BaseDataModule)."""
    cv = cfg.get("cv") or {}
    if cv.get("fold") is None:
        return None
    return {"index": int(cv.fold), "folds": int(cv.folds), "seed": int(cv.get("seed") or 0)}


def fold_statistics(fold_metrics: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of every metric that every fold logged."""
    shared = set.intersection(*(set(m) for m in fold_metrics))
    stats = {key: mean_std([m[key] for m in fold_metrics]) for key in sorted(shared)}
    return {k: s[0] for k, s in stats.items()}, {k: s[1] for k, s in stats.items()}


def render(means: dict[str, float], stds: dict[str, float], folds: int, run_dir: Path) -> str:
    width = max([len(k) for k in means] + [6])
    lines = [f"{folds}-fold cross-validation: mean +- std over the folds", "",
             f"{'metric'.ljust(width)}  mean     std", f"{'-' * width}  -------  -------"]
    lines += [f"{k.ljust(width)}  {means[k]:.4f}   {stds[k]:.4f}" for k in means]
    return "\n".join(lines) + f"\n\nrun dir: {run_dir} (folds: fold0 .. fold{folds - 1})"


def run_folds(cfg: DictConfig, task: Task) -> Outcome:
    parent = Path(HydraConfig.get().runtime.output_dir)
    folds = int(cfg.cv.folds)
    base = parent_overrides(drop=("cv.fold", "ckpt_path"))
    results = [run_child(task, f"fold{k}", [*base, f"cv.fold={k}"], parent) for k in range(folds)]
    failed = [f"fold{k}" for k, r in enumerate(results) if r.get("status") != "completed"]
    if failed:
        raise RuntimeError(f"cross-validation: {', '.join(failed)} did not complete (see their results.json)")
    means, stds = fold_statistics([r["metrics"] for r in results])
    optimized = means.get(cfg.model.get("optimized_metric") or "")
    extra = {"children": "folds", "metrics_std": stds,
             "folds": [{"dir": f"fold{k}", "metrics": r["metrics"]} for k, r in enumerate(results)]}
    return Outcome(means, optimized, extra, render(means, stds, folds, parent))
