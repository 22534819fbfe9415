"""Sweep summaries: `summary.md` and `summary.csv` in a multirun's sweep dir.

One row per configuration (the job's command-line overrides other than `seed`), each headline
metric as mean +- std over that configuration's completed runs with their count n, the mean wall
time, and the runs that failed, listed with their error; `summary.png` draws the first metric as one bar
per configuration with a std error bar, and a sweep of pipelines with a curve gets `curve.png` (the
curve's points pooled over the jobs). A cross-validation or Optuna job counts as one run; a pipeline's
stages are runs of their own (a row per stage). A Hydra callback (`SweepSummary`,
configured in conf/hydra/default.yaml) writes it when a multirun ends; rebuild it for any sweep
dir, also one still running or cut short:

    python -m runner.sweep_summary outputs/multirun/2026-01-01_12-00-00-000000
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback

from .results import RESULTS_FILE

HEADLINES = ("test/acc", "test/target_acc", "test/linear_acc", "test/knn_acc", "test/nmi", "test/ari", "test/fid")
OPTUNA_RESULTS = "optimization_results.yaml"


@dataclass
class Job:
    dir: Path
    overrides: list[str]
    status: str                       # completed | failed | interrupted | incomplete (no results.json yet)
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str | None = None
    optimized_metric: str | None = None
    children: str | None = None       # a run of runs: folds | stages | trials (runner/protocols)
    stage: str | None = None          # a pipeline stage: its dir under the pipeline's (e.g. finetune/labels_per_class=1)
    curve: dict | None = None         # a pipeline's label-efficiency curve

    @property
    def seed(self) -> str:
        return next((o.split("=", 1)[1] for o in self.overrides if override_key(o) == "seed"), "-")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_number(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else math.inf for p in path.parts)


def read_job(job_dir: Path) -> Job:
    results = job_dir / RESULTS_FILE
    if results.is_file():
        try:
            data = json.loads(results.read_text())
        except (OSError, ValueError) as err:
            return Job(job_dir, [], "incomplete", error=f"unreadable {RESULTS_FILE}: {err}")
        return Job(job_dir, list(data.get("overrides") or []), data.get("status", "completed"),
                   {k: float(v) for k, v in (data.get("metrics") or {}).items()}, data.get("wall_time_s"),
                   data.get("error"), data.get("optimized_metric"), children=data.get("children"), curve=data.get("curve"))
    import yaml

    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    children = "stages" if any(override_key(o) == "pipeline" for o in overrides) else None  # a running pipeline
    return Job(job_dir, list(overrides), "incomplete", error="no results.json (still running, or killed hard)",
               children=children)


def collect(sweep_dir: Path) -> list[Job]:
    """Every job dir under the sweep dir: those with results.json or Hydra's .hydra/overrides.yaml."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for p in sweep_dir.rglob(RESULTS_FILE)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found = {d for d in found if ".submitit" not in d.parts and d != sweep_dir}
    jobs = [read_job(d) for d in sorted(found, key=lambda d: job_number(d.relative_to(sweep_dir)))]
    for pipeline in (p for p in jobs if p.children == "stages"):
        for job in jobs:
            if job.dir.is_relative_to(pipeline.dir) and job.dir != pipeline.dir:
                name_stage(job, pipeline.dir)
    return [j for j in jobs if counted(j, jobs)]


def name_stage(job: Job, pipeline_dir: Path) -> None:
    """A stage is named by its dir; the files handed to it (paths into its pipeline's dir) are left out of its
    configuration, so the same stage of every seed's pipeline pools into one row."""
    job.stage = str(job.dir.relative_to(pipeline_dir))
    inside = (str(pipeline_dir.absolute()), str(pipeline_dir.resolve()))
    job.overrides = [o for o in job.overrides if not o.split("=", 1)[-1].startswith(inside)]


def counted(job: Job, jobs: list[Job]) -> bool:
    """A run of runs counts as one run (the mean over its folds, the best trial), except a pipeline, whose
    stages are the runs (rows per stage, pooled over the sweep's seeds)."""
    if job.children == "stages":
        return False
    return not any(p.children in ("folds", "trials") and job.dir.is_relative_to(p.dir) and job.dir != p.dir
                   for p in jobs)


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


@dataclass
class Row:
    label: str
    jobs: list[Job]

    @property
    def completed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed"]

    def stat(self, metric: str) -> tuple[float, float, int] | None:
        values = [j.metrics[metric] for j in self.completed if metric in j.metrics and math.isfinite(j.metrics[metric])]
        return (*mean_std(values), len(values)) if values else None

    def wall_time(self) -> float | None:
        times = [j.wall_time_s for j in self.completed if j.wall_time_s is not None]
        return sum(times) / len(times) if times else None


def common_overrides(jobs: list[Job]) -> list[str]:
    """Overrides (other than seed) every job shares: the sweep's fixed settings."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    return [o for o in (jobs[0].overrides if jobs else []) if o in shared and override_key(o) != "seed"]


def group(jobs: list[Job]) -> list[Row]:
    """Configurations = (pipeline stage, overrides other than seed); labelled by the stage and the overrides
    that vary across the sweep (across the same stage of every pipeline)."""
    common = {stage: set(common_overrides([j for j in jobs if j.stage == stage])) for stage in {j.stage for j in jobs}}
    rows: dict[tuple, Row] = {}
    for job in jobs:
        key = (job.stage, tuple(o for o in job.overrides if override_key(o) != "seed"))
        varying = " ".join(o for o in key[1] if o not in common[job.stage])
        label = " ".join(part for part in (job.stage, varying) if part) or "(every job: same configuration)"
        rows.setdefault(key, Row(label, [])).jobs.append(job)
    return list(rows.values())


def metric_columns(jobs: list[Job]) -> list[str]:
    present = {m for j in jobs for m in j.metrics}
    optimized = [m for m in dict.fromkeys(j.optimized_metric for j in jobs) if m and m in present]
    return [m for m in HEADLINES if m in present] + [m for m in optimized if m not in HEADLINES]


def fmt(stat: tuple[float, float, int] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.4f} +- {stat[1]:.4f} (n={stat[2]})"


def render_markdown(sweep_dir: Path, jobs: list[Job]) -> str:
    rows, columns = group(jobs), metric_columns(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "interrupted", "incomplete")}
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), ""]
    if common_overrides(jobs):
        lines += ["Common overrides: `" + " ".join(common_overrides(jobs)) + "`", ""]
    header = ["configuration", "runs (completed/all)", *columns, "wall time per run (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        wall = row.wall_time()
        cells = [f"`{row.label}`", f"{len(row.completed)}/{len(row.jobs)}", *(fmt(row.stat(m)) for m in columns),
                 "-" if wall is None else f"{wall:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    unfinished = [j for j in jobs if j.status != "completed"]
    if unfinished:
        lines += ["", "## Runs that did not complete", "", "| run dir | configuration | seed | status | error |",
                  "|---|---|---|---|---|"]
        for row in rows:
            for j in row.jobs:
                if j.status != "completed":
                    error = (j.error or "").replace("|", "\\|").replace("\n", " ")[:300]
                    lines.append(f"| {j.dir.relative_to(sweep_dir)} | `{row.label}` | {j.seed} | {j.status} | {error} |")
    optuna = sweep_dir / OPTUNA_RESULTS
    if optuna.is_file():
        import yaml

        best = yaml.safe_load(optuna.read_text()) or {}
        lines += ["", "## Optuna", "", f"best value: {best.get('best_value')}",
                  f"best params: `{' '.join(f'{k}={v}' for k, v in (best.get('best_params') or {}).items())}`"]
    return "\n".join(lines) + "\n"


def render_csv(jobs: list[Job]) -> str:
    columns = metric_columns(jobs)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["configuration", "runs", "completed", "failed", "interrupted", "incomplete",
                     *(f"{m}_{s}" for m in columns for s in ("mean", "std", "n")), "wall_time_s_mean"])
    for row in group(jobs):
        stats = [row.stat(m) for m in columns]
        writer.writerow([row.label, len(row.jobs), len(row.completed),
                         *(sum(j.status == s for j in row.jobs) for s in ("failed", "interrupted", "incomplete")),
                         *(x for s in stats for x in (s if s else ("", "", 0))), row.wall_time() or ""])
    return out.getvalue()


def write_plots(sweep_dir: Path, jobs: list[Job]) -> list[Path]:
    """summary.png: one bar per configuration, its first metric's mean with a std error bar; curve.png: the
    pipelines' curves pooled over the sweep's jobs (mean +- std at each point)."""
    from .protocols.plots import bar_chart, line_chart

    written = []
    columns = metric_columns(jobs)
    if columns:
        bars = {row.label: [j.metrics[columns[0]] for j in row.completed if columns[0] in j.metrics]
                for row in group(jobs)}
        bars = {label: values for label, values in bars.items() if values}
        if bars:
            written.append(bar_chart(bars, columns[0], sweep_dir / "summary.png"))
    curves = [read_job(d).curve for d in sorted({p.parent for p in sweep_dir.rglob(RESULTS_FILE)})]
    curves = [c for c in curves if c]
    if curves:
        series: dict[str, dict[str, list[float]]] = {}
        for curve in curves:
            for name, points in curve["series"].items():
                for x, values in points.items():
                    series.setdefault(name, {}).setdefault(x, []).extend(values)
        written.append(line_chart(series, curves[0]["x"], curves[0]["metric"], sweep_dir / "curve.png"))
    return written


def write_summary(sweep_dir: str | Path) -> Path:
    """Write summary.md, summary.csv (atomically) and the plots in `sweep_dir`; returns summary.md's path."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    for name, text in (("summary.md", render_markdown(sweep_dir, jobs)), ("summary.csv", render_csv(jobs))):
        tmp = sweep_dir / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(sweep_dir / name)
    write_plots(sweep_dir, jobs)
    return sweep_dir / "summary.md"


class SweepSummary(Callback):
    """Hydra callback: the sweep summary after every job (a live, partial one; also when the sweep is
    later stopped by a failed job) and when the multirun ends (basic, Optuna and submitit sweeps)."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        import logging

        path = write_summary(Path(config.hydra.sweep.dir))
        failed = [j for j in collect(path.parent) if j.status != "completed"]
        log = logging.getLogger("transferlab")
        log.info("sweep summary: %s", path)
        if failed:
            log.warning("%d run(s) did not complete; see %s", len(failed), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild summary.md / summary.csv of a sweep dir (also a partial one).")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    if not collect(args.sweep_dir):
        parser.error(f"{args.sweep_dir} holds no runs (no <job>/results.json or <job>/.hydra/overrides.yaml)")
    print(write_summary(args.sweep_dir).read_text(), end="")


if __name__ == "__main__":
    main()
