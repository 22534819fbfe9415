"""Checks on what a dataset holds, run once when it is loaded, before any training step.

Every loader goes through these (`registry.load_dataset` and the npz reader), so a bad file fails
with one line naming the file, the field, the count and the fix instead of training on silently
corrupted data (uint16 wrapped modulo 256, NaN turned into 0, 300 images with 250 labels cut to 250,
float labels truncated, a 1,001-class head for three classes numbered up to 1000).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import DataFormatError

log = logging.getLogger(__name__)

# A label range this much wider than the number of classes in use is a numbering, not a class list.
SPARSE_LABELS_FACTOR = 2


def _few(values, limit: int = 8) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_counts(n_images: int, n_labels: int, where: str) -> None:
    if n_images != n_labels:
        raise DataFormatError(
            f"{where}: {n_images} images but {n_labels} labels; 'images' and 'labels' must have one entry "
            f"per example (fix the file so both have the same length)"
        )
    if n_images == 0:
        raise DataFormatError(f"{where}: holds 0 images; write the examples into 'images' and 'labels'")


def check_images(images, where: str) -> np.ndarray:
    """uint8 images as they are; floats in [0, 1] and integer images within 0..255 converted explicitly
    by `datasets.to_nchw_uint8` (lossless for the integers); anything else refused with its fix."""
    images = np.asarray(images)
    field = f"{where} field 'images'"
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            bad_images = int((~finite.reshape(len(images), -1).all(1)).sum()) if images.ndim > 1 else 1
            raise DataFormatError(
                f"{field} ({images.dtype}) holds {int((~finite).sum())} NaN/Inf values in {bad_images} "
                f"images; replace or drop those images"
            )
        lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        if lo < 0 or hi > 1:
            raise DataFormatError(
                f"{field} ({images.dtype}) has values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] "
                f"(divide 0-255 values by 255) or be stored as uint8 0-255"
            )
        return images
    if np.issubdtype(images.dtype, np.integer):
        lo, hi = int(images.min(initial=0)), int(images.max(initial=0))
        if lo < 0 or hi > 255:
            raise DataFormatError(
                f"{field} is {images.dtype} with values in [{lo}, {hi}]; only 0-255 can be read without "
                f"loss. Scale it yourself: uint8 (e.g. (images >> 8).astype(np.uint8) for 16-bit) or "
                f"float32 in [0, 1] (images / {hi})"
            )
        return images.astype(np.uint8)  # every value fits: no wrap-around
    raise DataFormatError(f"{field} has dtype {images.dtype}; store uint8 0-255 or float in [0, 1]")


def check_labels(labels, where: str) -> np.ndarray:
    """Integer labels >= 0 as int64; integral floats converted, fractional ones refused."""
    labels = np.asarray(labels)
    field = f"{where} field 'labels'"
    if labels.ndim != 1:
        raise DataFormatError(f"{field} has shape {labels.shape}; it must be one integer class index per image (N,)")
    if np.issubdtype(labels.dtype, np.floating):
        finite = np.isfinite(labels)
        fractional = ~finite | (labels != np.round(np.where(finite, labels, 0)))
        if fractional.any():
            examples = _few(labels[fractional][:5].tolist())
            raise DataFormatError(
                f"{field} holds {int(fractional.sum())} non-integer values (e.g. {examples}); labels are class "
                f"indices 0..K-1: store them as integers"
            )
        labels = labels.astype(np.int64)  # integral floats (1.0, 2.0): exact
    elif np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        labels = labels.astype(np.int64)
    else:
        raise DataFormatError(f"{field} has dtype {labels.dtype}; store integer class indices 0..K-1")
    if len(labels) and labels.min() < 0:
        raise DataFormatError(
            f"{field} holds {int((labels < 0).sum())} negative values (min {int(labels.min())}); "
            f"labels are class indices 0..K-1"
        )
    return labels


def check_classes(train_labels, other: dict[str, np.ndarray], classes: list[str], where: str,
                  labels_needed: bool = True) -> None:
    """Labels in 0..K-1, every class present in training (an error when the method trains on labels,
    else a warning), at least two classes, and no val/test class the training split lacks."""
    train_labels = np.asarray(train_labels)
    k = len(classes)
    present = np.unique(train_labels)
    if len(present) and (present[0] < 0 or present[-1] >= k):
        raise DataFormatError(f"{where}: training labels lie in [{present[0]}, {present[-1]}] but the dataset "
                              f"has {k} classes (0..{k - 1})")
    if labels_needed and len(present) < 2:
        raise DataFormatError(
            f"{where}: the training split has {len(present)} class ({_few(classes[i] for i in present)}); "
            f"this method learns from labels and needs at least 2 classes"
        )
    known = set(present.tolist())
    for split, labels in other.items():
        extra = sorted(set(np.unique(np.asarray(labels)).tolist()) - known)
        if extra:
            names = _few(classes[i] if 0 <= i < k else i for i in extra)
            raise DataFormatError(
                f"{where}: the {split} split has {int(np.isin(labels, extra).sum())} images of {len(extra)} "
                f"classes the training split lacks ({names}); a model cannot predict a class it never saw: "
                f"drop them or add training images of those classes"
            )
    missing = sorted(set(range(k)) - set(present.tolist()))
    if missing:
        if k > SPARSE_LABELS_FACTOR * len(present) and k > 10:
            raise DataFormatError(
                f"{where}: labels take {len(present)} distinct values up to {k - 1}, which would make a "
                f"{k}-class head; remap them to 0..{len(present) - 1} (e.g. "
                f"`_, labels = np.unique(labels, return_inverse=True)`)"
            )
        names = _few(classes[i] for i in missing)
        msg = (f"{where}: {len(missing)} of {k} classes have no training image ({names}); add images of "
               f"them or remap the labels to 0..{len(present) - 1}")
        if labels_needed:
            raise DataFormatError(msg)
        log.warning("%s", msg)


def check_image_files(samples: list[tuple[Path, int]], image_size: int | None, where: str) -> None:
    """Every file opens as an image (header only), and without `data.image_size` all have one size."""
    from PIL import Image, UnidentifiedImageError

    first: tuple[Path, tuple[int, int]] | None = None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                size = img.size
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataFormatError(f"{where}: cannot read image {path}: {err}. Remove or replace the file.") from err
        if first is None:
            first = (path, size)
        elif image_size is None and size != first[1]:
            raise DataFormatError(
                f"{where}: images of different sizes, {first[0]} is {first[1][0]}x{first[1][1]} and {path} is "
                f"{size[0]}x{size[1]}; set data.image_size=N to resize all to NxN"
            )
