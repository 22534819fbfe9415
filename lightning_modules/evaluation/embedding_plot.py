"""2-D maps of learned features (t-SNE), coloured by class and optionally marked by domain."""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
