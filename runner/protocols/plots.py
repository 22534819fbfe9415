"""The two plots of runs of runs and sweeps: bars with error bars (one per configuration) and curves
(a metric against a varied option, one line per stage), both mean +- std where several runs pool."""
from __future__ import annotations

import statistics
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def bar_chart(bars: dict[str, list[float]], metric: str, path: Path, title: str = "") -> Path:
    """One horizontal bar per label (long override labels wrap on the left): the mean of its values, the
    error bar one standard deviation, n after the label."""
    import textwrap

    plt = _pyplot()
    labels = list(bars)
    stats = [mean_sd(bars[label]) for label in labels]
    names = [textwrap.fill(f"{label} (n={len(bars[label])})", 48) for label in labels]
    lines = sum(name.count("\n") + 1 for name in names)
    fig, ax = plt.subplots(figsize=(8.0, 1.0 + 0.32 * lines + 0.25 * len(labels)))
    ax.barh(range(len(labels)), [s[0] for s in stats], xerr=[s[1] for s in stats], capsize=4, color="#4c72b0")
    ax.set_yticks(range(len(labels)), names, fontsize=8)
    ax.invert_yaxis()  # the first configuration on top, as in summary.md
    for i, (mean, sd) in enumerate(stats):
        ax.text(mean + sd, i, f" {mean:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.12 * max((m + sd for m, sd in stats), default=1.0) or 1.0)  # room for the value labels
    ax.set_xlabel(metric)
    ax.set_title(title or f"{metric}: mean ± std")
    return _save(fig, path)


def line_chart(series: dict[str, dict[str, list[float]]], x_label: str, metric: str, path: Path,
               title: str = "") -> Path:
    """series: line -> x (categorical, in first-seen order) -> values; mean with a std error bar."""
    plt = _pyplot()
    xs: list[str] = []
    for points in series.values():
        xs += [x for x in points if x not in xs]
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for name, points in series.items():
        at = [i for i, x in enumerate(xs) if x in points]
        stats = [mean_sd(points[xs[i]]) for i in at]
        runs = max(len(v) for v in points.values())
        ax.errorbar(at, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=4,
                    label=f"{name} (n={runs})")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} against {x_label}")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
