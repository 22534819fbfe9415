"""Seeded, stratified splits of label arrays into index sets."""
from __future__ import annotations

import numpy as np


def stratified_split(labels, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices class by class so every part keeps the class proportions.

    `fractions` maps a part name to its share; the remainder goes to the part named "rest".
    Each class contributes round(share * count) examples to each part, so tiny classes may give
    none. The same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*fractions, "rest"]}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, share in fractions.items():
            count = int(round(share * len(idx)))
            parts[name].append(idx[start : start + count])
            start += count
        parts["rest"].append(idx[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def class_balanced_subset(labels, per_class_total: int, seed: int) -> np.ndarray:
    """`per_class_total` indices spread as evenly as possible over the classes (seeded)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    base, extra = divmod(per_class_total, len(classes))
    chosen = []
    for i, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        chosen.append(idx[: base + (1 if i < extra else 0)])
    return np.sort(np.concatenate(chosen))
