"""Seeded, stratified splits of label arrays into index sets."""
from __future__ import annotations

import numpy as np


def _per_class_counts(class_sizes: np.ndarray, share: float) -> np.ndarray:
    """Counts per class summing to round(share * total): floors first, then the largest remainders."""
    exact = share * class_sizes
    counts = np.floor(exact).astype(int)
    missing = int(round(share * class_sizes.sum())) - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    for cls in order[: max(0, missing)]:
        counts[cls] += 1
    return np.minimum(counts, class_sizes)


def stratified_split(labels, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices class by class so every part keeps the class proportions.

    `fractions` maps a part name to its share of the whole; the remainder goes to the part named
    "rest". Part sizes are round(share * N) overall, spread over classes by largest remainder, so
    small datasets still get every part. The same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    shuffled = [rng.permutation(np.flatnonzero(labels == cls)) for cls in classes]
    remaining = np.array([len(idx) for idx in shuffled])
    starts = np.zeros(len(classes), dtype=int)
    parts: dict[str, np.ndarray] = {}
    total = len(labels)
    for name, share in fractions.items():
        # share of the whole, expressed relative to what is left in each class
        left = remaining.sum()
        rel = 0.0 if left == 0 else min(1.0, share * total / left)
        counts = _per_class_counts(remaining, rel)
        parts[name] = np.concatenate([idx[s : s + c] for idx, s, c in zip(shuffled, starts, counts)] or [np.array([], int)])
        starts += counts
        remaining -= counts
    parts["rest"] = np.concatenate([idx[s:] for idx, s in zip(shuffled, starts)] or [np.array([], int)])
    return {name: np.sort(idx.astype(int)) for name, idx in parts.items()}


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


def stratified_subset(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n` examples drawn (seeded) from the whole split, each class in its proportion:
    the subset every diagnostic (t-SNE maps, image grids, reference sets) uses, so that a class-ordered
    split never gives a map of its first classes only. All indices when n >= len(labels)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, {"keep": n / len(labels)}, seed)["keep"]


def stratified_folds(labels, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint index sets covering every example, each class spread evenly over them (seeded):
    scikit-learn's StratifiedKFold with shuffling. k-fold cross-validation tests on fold i and trains on
    the others. Needs every class to have at least `folds` examples."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if folds < 2 or counts.min() < folds:
        smallest = classes[counts.argmin()]
        raise ValueError(f"{folds} folds need 2 <= folds <= the smallest class size "
                         f"({counts.min()} examples of class {smallest})")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels)]
