"""2-D maps of learned features (t-SNE), coloured by class and optionally marked by domain.

A t-SNE map costs seconds of CPU. `save_tsne_plot_in_background` hands it to one worker process
(started on first use and kept), so a run trains or tests on while the map is drawn; the runner calls
`wait_for_plots()` before it declares the run complete.
"""
from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

_worker: ProcessPoolExecutor | None = None
_pending: list[tuple[Path, Future]] = []


def embed_2d(features: np.ndarray, seed: int = 0, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of at most `max_points` rows (seeded subsample); returns (coords, kept row indices)."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(features))[:max_points])
    x = np.asarray(features, dtype=np.float32)[keep]
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return coords, keep


def save_tsne_plot(features, labels, path, domains=None, title: str | None = None, seed: int = 0) -> Path:
    """Scatter of a t-SNE map: colour = class; marker = domain (0 = source 'o', 1 = target 'x')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, keep = embed_2d(np.asarray(features), seed=seed)
    labels = np.asarray(labels)[keep]
    domains = None if domains is None else np.asarray(domains)[keep]
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = {0: "o", 1: "x"}
    for dom in ([None] if domains is None else np.unique(domains)):
        mask = np.ones(len(labels), bool) if dom is None else domains == dom
        ax.scatter(coords[mask, 0], coords[mask, 1], c=labels[mask], cmap="tab10", s=6,
                   marker=markers.get(dom, "o"), vmin=0, vmax=max(9, int(labels.max())),
                   label=None if dom is None else ("source" if dom == 0 else "target"))
    if domains is not None:
        ax.legend(loc="best")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or "t-SNE of features (colour = class)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _save_tsne_plot_one_thread(*args, **kwargs) -> Path:
    """In the worker: one BLAS/OpenMP thread, since the run's own process keeps the other cores busy."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return save_tsne_plot(*args, **kwargs)


def save_tsne_plot_in_background(features, labels, path, **kwargs) -> None:
    """`save_tsne_plot` in the worker process; returns at once (see `wait_for_plots`)."""
    global _worker
    if _worker is None:
        # spawn, not fork: forking a process that holds torch's thread pools can deadlock the child
        _worker = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    future = _worker.submit(_save_tsne_plot_one_thread, np.asarray(features), np.asarray(labels), str(path), **kwargs)
    _pending.append((Path(path), future))


def wait_for_plots(timeout_s: float = 900.0) -> list[Path]:
    """Blocks until every background plot is written; returns the paths written. A plot that fails
    is reported as a warning: a diagnostic picture must not fail a finished run."""
    written = []
    while _pending:
        path, future = _pending.pop(0)
        try:
            written.append(Path(future.result(timeout=timeout_s)))
        except Exception as err:  # noqa: BLE001 - any failure of the worker is reported, not raised
            warnings.warn(f"t-SNE plot {path} was not written: {type(err).__name__}: {err}", stacklevel=2)
    return written
