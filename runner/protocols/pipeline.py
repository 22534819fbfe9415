"""Pipelines: `python run.py pipeline=<name>` runs the stages of conf/pipeline/<name>.yaml in order.

Each stage is a normal run dir under the pipeline's (`<run dir>/<stage>`, or `<run dir>/<stage>/<key>=<value>`
for each value of a stage's `vary`), composed as

    python run.py <pipeline.overrides> <stage overrides> <key>=<value> <the command's own overrides> <inputs>

(a later override of the same key wins: the command line sets what every stage shares, e.g. data=, seed=,
trainer.max_epochs=). `inputs` hands a file of an earlier stage to an option by reference, e.g.
`{model.backbone.checkpoint: pretrain/encoder.pt}`: no path is typed. A stage whose results.json says
completed is reused, so the same command finishes a pipeline that was killed. The parent's results.json
lists every stage; `summary.md` is its table and `pipeline.png` its plot: with `curve` a metric against the
varied key, one line per stage (a label-efficiency curve), otherwise one bar per stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from datamodules.errors import ConfigError

from ..sweep_summary import HEADLINES
from . import Outcome
from .children import Task, override_key, parent_overrides, run_child
from .plots import bar_chart, line_chart


@dataclass
class Stage:
    name: str                  # its run dir, relative to the pipeline's
    stage: str                 # the stage of the config it comes from
    overrides: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # option -> "<earlier stage>/<file>"
    x: object = None           # the value of the varied key (a point of the curve)


def merge_overrides(*groups: list[str]) -> list[str]:
    """Overrides in order, a later one of the same key replacing an earlier one (Hydra refuses two)."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(override_key(override), None)
            merged[override_key(override)] = override
    return list(merged.values())


def value_text(value) -> str:
    return "null" if value is None else str(value)


def expand(spec: DictConfig) -> list[Stage]:
    """The stages of `pipeline.stages` in order, a varied stage once per value; checked."""
    stages: list[Stage] = []
    names: list[str] = []
    for name, node in (spec.get("stages") or {}).items():
        node = OmegaConf.to_container(node, resolve=True) or {}
        unknown = sorted(set(node) - {"overrides", "inputs", "vary"})
        if unknown:
            raise ConfigError(f"pipeline.stages.{name}: unknown key(s) {unknown}; a stage has overrides, inputs, vary")
        inputs = dict(node.get("inputs") or {})
        for option, ref in inputs.items():
            source = str(ref).split("/", 1)[0]
            if source not in names or "/" not in str(ref):
                raise ConfigError(f"pipeline.stages.{name}.inputs.{option}={ref}: must be <earlier stage>/<file>; "
                                  f"earlier stages: {names or 'none'}")
        vary = node.get("vary") or {}
        if len(vary) > 1:
            raise ConfigError(f"pipeline.stages.{name}.vary: one key at a time (got {sorted(vary)})")
        overrides = list(node.get("overrides") or [])
        if not vary:
            stages.append(Stage(name, name, overrides, inputs))
        for key, values in vary.items():
            short = key.rsplit(".", 1)[-1]
            stages += [Stage(f"{name}/{short}={value_text(v)}", name, [*overrides, f"{key}={value_text(v)}"], inputs, v)
                       for v in values]
        names.append(name)
    if not stages:
        raise ConfigError("pipeline.stages is empty; a pipeline needs at least one stage")
    return stages


def input_overrides(stage: Stage, parent: Path) -> list[str]:
    """`option=<the earlier stage's file>`, checked to exist."""
    out = []
    for option, ref in stage.inputs.items():
        path = parent / ref
        if not path.is_file():
            raise ConfigError(f"pipeline stage {stage.name}: inputs.{option}={ref}, but {path} does not exist "
                              f"(did stage {ref.split('/', 1)[0]} write it?)")
        out.append(f"{option}={path}")
    return out


def headline(metrics: dict[str, float], preferred: str | None = None) -> str | None:
    if preferred and preferred in metrics:
        return preferred
    return next((m for m in HEADLINES if m in metrics), None)


def render(rows: list[dict], parent: Path) -> str:
    lines = [f"# Pipeline: {parent}", "", "| stage | status | metric | value | wall time (s) |", "|---|---|---|---|---|"]
    for row in rows:
        value = row.get("value")
        lines.append(f"| {row['name']} | {row['status']} | {row.get('metric') or '-'} | "
                     f"{'-' if value is None else f'{value:.4f}'} | {row.get('wall_time_s') or '-'} |")
    return "\n".join(lines) + "\n"


def comparison(rows: list[dict], compare: list[str]) -> str:
    """`pipeline.compare: [method, baseline]`: one line, the method's headline metric beside the baseline's."""
    if len(compare) != 2:
        return ""
    found = {row["name"]: row for row in rows}
    missing = [name for name in compare if name not in found or found[name].get("value") is None]
    if missing:
        raise ConfigError(f"pipeline.compare={compare}: no result for {missing}; stages: {list(found)}")
    method, baseline = (found[name] for name in compare)
    gain = method["value"] - baseline["value"]
    return (f"\n{method['metric']}: {method['name']} {method['value']:.4f} vs {baseline['name']} "
            f"{baseline['value']:.4f} ({gain:+.4f})\n")


def curve_series(rows: list[dict], stages: list[Stage], curve: dict) -> dict[str, dict[str, list[float]]]:
    """stage -> x label -> values (one per pipeline; a sweep's summary pools several)."""
    series: dict[str, dict[str, list[float]]] = {}
    for row, stage in zip(rows, stages):
        if stage.stage in curve["stages"] and row.get("value") is not None:
            x = "all" if stage.x is None else value_text(stage.x)
            series.setdefault(stage.stage, {}).setdefault(x, []).append(row["value"])
    return series


def plot(rows: list[dict], stages: list[Stage], curve: dict | None, compare: list[str], path: Path) -> dict | None:
    """The curve, or one bar per stage (per compared stage with `pipeline.compare`)."""
    if curve:
        series = curve_series(rows, stages, curve)
        line_chart(series, curve.get("x", "x"), curve["metric"], path, title="")
        return {"x": curve.get("x"), "metric": curve["metric"], "series": series}
    bars = {row["name"]: [row["value"]] for row in rows
            if row.get("value") is not None and (not compare or row["name"] in compare)}
    metric = next((row["metric"] for row in rows if row.get("metric")), "metric")
    bar_chart(bars, metric, path)
    return None


def run_pipeline(cfg: DictConfig, task: Task) -> Outcome:
    spec = cfg.pipeline
    stages = expand(spec)
    curve = OmegaConf.to_container(spec.curve, resolve=True) if spec.get("curve") else None
    metric = curve["metric"] if curve else spec.get("metric")
    parent = Path(HydraConfig.get().runtime.output_dir)
    common = list(spec.get("overrides") or [])
    command = parent_overrides(drop=("pipeline", "ckpt_path"))
    rows = []
    for stage in stages:
        overrides = merge_overrides(common, stage.overrides, command, input_overrides(stage, parent))
        results = run_child(task, stage.name, overrides, parent)
        metrics = results.get("metrics") or {}
        key = headline(metrics, metric)
        rows.append({"name": stage.name, "status": results.get("status"), "metric": key,
                     "value": metrics.get(key) if key else None, "wall_time_s": results.get("wall_time_s")})
        if results.get("status") != "completed":
            raise RuntimeError(f"pipeline stage {stage.name} did not complete: {results.get('error')}")
    (parent / "summary.md").write_text(render(rows, parent))
    compare = list(spec.get("compare") or [])
    curve_data = plot(rows, stages, curve, compare, parent / "pipeline.png")
    metrics = {f"{row['name']}/{row['metric']}": row["value"] for row in rows if row.get("value") is not None}
    extra = {"children": "stages", "stages": rows, **({"curve": curve_data} if curve_data else {})}
    text = render(rows, parent) + comparison(rows, compare) + f"\nplot: {parent / 'pipeline.png'}"
    return Outcome(metrics, None, extra, text)
