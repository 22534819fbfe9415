"""Datasets by name.

A dataset spec is a config node `{name, root, download, ...}`. `load_dataset(spec, ...)` looks the
name up in `DATASETS`, calls its builder, carves the splits the dataset lacks (stratified and
seeded), converts images to the requested size and channels, and returns a `Splits`.

A builder takes the spec's options as keyword arguments and returns `RawSplits`: for each split
it has, either `(images, labels)` arrays (held in memory) or a list of `(path, label)` files.
Add a dataset with `@register_dataset("name")` (see README, "Adding a dataset").
"""
from __future__ import annotations

import inspect
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import embedded
from .datasets import ImageFileDataset, TensorImageDataset, to_nchw_uint8
from .decoded_cache import cached_file_dataset, check_cache_option
from .errors import ConfigError, DataFormatError, DataNotFoundError
from .splits import stratified_folds, stratified_split
from .validate import check_classes, check_counts, check_image_files, check_images, check_labels

DIGIT_CLASSES = [str(i) for i in range(10)]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class RawSplits:
    """What a builder returns: the splits the source defines, and the class names."""

    classes: list[str]
    splits: dict[str, Any]  # split name ("train", "val", "test" or "all") -> arrays or file list


@dataclass
class Splits:
    """A dataset ready for a DataModule: train/val/test datasets of (image in [-1, 1], label)."""

    name: str
    classes: list[str]
    train: Any
    val: Any
    test: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the converted images."""
        return self.train.shape


DATASETS: dict[str, Callable[..., RawSplits]] = {}


def register_dataset(name: str):
    def wrap(builder):
        DATASETS[name] = builder
        return builder

    return wrap


# ---------------------------------------------------------------------------------------------
# Embedded datasets (no files)


@register_dataset("digits")
def _digits(root=None, download=False) -> RawSplits:
    images, labels = embedded.digits()
    return RawSplits(DIGIT_CLASSES, {"all": (images, labels)})


@register_dataset("digits_m")
def _digits_m(root=None, download=False, seed: int = 0) -> RawSplits:
    images, labels = embedded.digits_m(seed)
    return RawSplits(DIGIT_CLASSES, {"all": (images, labels)})


# ---------------------------------------------------------------------------------------------
# torchvision datasets: real loading code, downloads only when `download: true`


def _torchvision(name: str, root, download: bool, make: Callable, expected: str):
    """Call a torchvision constructor; turn its 'not found' errors into one that says what to do."""
    root = Path(root if root is not None else "data").expanduser()
    try:
        return make(str(root), download)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        if download:
            cause = f"{type(err).__name__}: " + " ".join(str(err).split())[:300]
            raise DataNotFoundError(
                f"dataset '{name}': download=true but the download into {root} failed ({cause}); check the "
                f"network connection (offline machines: copy the files into {root / expected} by hand and run "
                f"with data.dataset.download=false)"
            ) from err
        where = root / expected
        state = "failed torchvision's integrity check (corrupt or partial)" if where.exists() else "is missing"
        raise DataNotFoundError(
            f"dataset '{name}': {where} {state} and download is false. Fetch it with "
            f"download=true (e.g. `python run.py data={name} data.dataset.download=true "
            f"data.dataset.root={root}`), or place the files there by hand. torchvision said: {err}"
        ) from err


def _tv_arrays(ds, data_attr="data", label_attr="targets"):
    return np.asarray(getattr(ds, data_attr)), np.asarray(getattr(ds, label_attr), dtype=np.int64)


def _train_test(name, root, download, cls, expected, classes, data_attr="data", label_attr="targets", **split_kw):
    def make(r, d, train):
        kw = {"train": train} if not split_kw else {split_kw["key"]: split_kw["train" if train else "test"]}
        return cls(r, download=d, **kw)

    train = _torchvision(name, root, download, lambda r, d: make(r, d, True), expected)
    test = _torchvision(name, root, download, lambda r, d: make(r, d, False), expected)
    return RawSplits(
        classes or list(train.classes),  # None: the names torchvision read from the dataset's meta file
        {"train": _tv_arrays(train, data_attr, label_attr), "test": _tv_arrays(test, data_attr, label_attr)},
    )


@register_dataset("mnist")
def _mnist(root=None, download=False) -> RawSplits:
    from torchvision.datasets import MNIST

    return _train_test("mnist", root, download, MNIST, "MNIST/raw", DIGIT_CLASSES)


@register_dataset("fashion_mnist")
def _fashion_mnist(root=None, download=False) -> RawSplits:
    from torchvision.datasets import FashionMNIST

    return _train_test("fashion_mnist", root, download, FashionMNIST, "FashionMNIST/raw", None)


@register_dataset("usps")
def _usps(root=None, download=False) -> RawSplits:
    from torchvision.datasets import USPS

    return _train_test("usps", root, download, USPS, "usps.bz2", DIGIT_CLASSES)


@register_dataset("svhn")
def _svhn(root=None, download=False) -> RawSplits:
    from torchvision.datasets import SVHN

    return _train_test(
        "svhn", root, download, SVHN, "train_32x32.mat", DIGIT_CLASSES,
        label_attr="labels", key="split", train="train", test="test",
    )


@register_dataset("cifar10")
def _cifar10(root=None, download=False) -> RawSplits:
    from torchvision.datasets import CIFAR10

    return _train_test("cifar10", root, download, CIFAR10, "cifar-10-batches-py", None)


@register_dataset("cifar100")
def _cifar100(root=None, download=False) -> RawSplits:
    from torchvision.datasets import CIFAR100

    return _train_test("cifar100", root, download, CIFAR100, "cifar-100-python", None)


@register_dataset("stl10")
def _stl10(root=None, download=False) -> RawSplits:
    from torchvision.datasets import STL10

    # STL-10's class_names.txt is optional in torchvision; these are its names, in label order.
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    return _train_test(
        "stl10", root, download, STL10, "stl10_binary", classes,
        label_attr="labels", key="split", train="train", test="test",
    )


@register_dataset("mnist_m")
def _mnist_m(root=None, download=False, seed: int = 0) -> RawSplits:
    """MNIST blended with photograph patches (Ganin et al. 2016), see `embedded.blend_with_photos`."""
    raw = _mnist(root, download)
    splits = {}
    for offset, (split, (images, labels)) in enumerate(raw.splits.items()):
        digits = torch.as_tensor(images).unsqueeze(1)
        splits[split] = (embedded.blend_with_photos(digits, seed + offset), labels)
    return RawSplits(DIGIT_CLASSES, splits)


# ---------------------------------------------------------------------------------------------
# Local datasets


def _npz_arrays(path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"npz file {path.resolve()} does not exist (option data.dataset.path / train_path / test_path)")
    try:
        with np.load(path) as z:
            missing = {"images", "labels"} - set(z.files)
            if missing:
                raise DataFormatError(f"npz file {path} lacks arrays {sorted(missing)}; it has {sorted(z.files)} "
                                      f"(write it with np.savez(path, images=..., labels=...))")
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # BadZipFile: a truncated archive
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(f"npz file {path} is not a readable .npz archive ({type(err).__name__}: {err}); "
                              f"write it with np.savez(path, images=..., labels=...)") from err
    where = f"npz file {path}"
    check_counts(len(images), len(labels), where)
    return check_images(images, where), check_labels(labels, where)


def _grey_npz_digits(images, where: str) -> torch.Tensor:
    """Grey images in any layout `to_nchw_uint8` reads -> (N, 1, H, W) uint8, for `blend_with_photos`."""
    x = to_nchw_uint8(images)
    if x.shape[1] != 1:
        raise DataFormatError(
            f"{where}: data.dataset.blend_with_photos=true needs grey uint8 images (N,H,W), got shape "
            f"{tuple(np.shape(images))} ({x.shape[1]} channels)"
        )
    return x


@register_dataset("npz")
def _npz(root=None, download=False, path=None, train_path=None, test_path=None,
         blend_with_photos: bool = False, blend_seed: int = 0) -> RawSplits:
    """`blend_with_photos: true` turns grey digits into colour ones exactly as `digits_m` is made
    (`embedded.blend_with_photos`, seeded by `blend_seed`; split i of the file(s) uses `blend_seed + i`)."""
    if path is not None and (train_path or test_path):
        raise ConfigError("npz dataset: give either `path` (auto-split) or `train_path` + `test_path`, not both")
    if path is not None:
        splits = {"all": _npz_arrays(path)}
    elif train_path and test_path:
        splits = {"train": _npz_arrays(train_path), "test": _npz_arrays(test_path)}
    else:
        raise ConfigError("npz dataset needs data.dataset.path=FILE.npz, or data.dataset.train_path and data.dataset.test_path")
    if blend_with_photos:
        splits = {
            split: (embedded.blend_with_photos(_grey_npz_digits(images, f"npz {split}"), blend_seed + offset), labels)
            for offset, (split, (images, labels)) in enumerate(splits.items())
        }
    labels = np.concatenate([lab for _, lab in splits.values()])
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return RawSplits([str(i) for i in range(num_classes)], splits)


@register_dataset("rotated_mnist")
def _rotated_mnist(root=None, download=False, path=None, angle: float = 0.0, shard: int = 0, shards: int = 1,
                   shard_seed: int = 0) -> RawSplits:
    """Rotated MNIST (Ghifary et al. 2015; DomainBed's RotatedMNIST) from an MNIST npz (`path`): its images
    split into `shards` disjoint seeded parts, part `shard` rotated by `angle` degrees, so each domain
    (0, 15, ..., 75 degrees = shards 0..5) holds different digits."""
    from torchvision.transforms.v2 import functional as TF

    if path is None:
        raise ConfigError("rotated_mnist needs path=<an MNIST npz>, e.g. ../shared/data/mnist_test.npz")
    if not 0 <= int(shard) < int(shards):
        raise ConfigError(f"rotated_mnist: shard={shard} must lie in [0, shards={shards})")
    images, labels = _npz_arrays(path)
    part = np.sort(np.random.default_rng(shard_seed).permutation(len(labels))[int(shard)::int(shards)])
    x = _grey_npz_digits(images, f"rotated_mnist {path}")[torch.as_tensor(part)]
    rotated = TF.rotate(x, float(angle), interpolation=TF.InterpolationMode.BILINEAR)
    labels = np.asarray(labels)[part]
    return RawSplits([str(i) for i in range(int(np.asarray(labels).max()) + 1)], {"all": (rotated, labels)})


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan_classes(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    found = [p.name for p in _class_folders(folder)]
    if not found:
        loose = _image_files(folder)
        hint = f" ({len(loose)} image files lie directly in it)" if loose else ""
        raise DataFormatError(f"image folder {folder} has no class subfolders{hint}; expected {folder}/<class>/<image>")
    if classes is not None and found != classes:
        raise DataFormatError(f"image folder {folder} has classes {found}, but the train split has {classes}")
    classes = found
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = _image_files(folder / name)
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    if empty:
        raise DataFormatError(
            f"image folder {folder}: class folders {empty} contain no images "
            f"(extensions {sorted(IMAGE_EXTENSIONS)})"
        )
    return classes, samples


@register_dataset("imagefolder")
def _imagefolder(root=None, download=False) -> RawSplits:
    if root is None:
        raise ConfigError("imagefolder needs data.dataset.root=DIR (DIR/<class>/* or DIR/{train,val,test}/<class>/*)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root.resolve()} does not exist (option data.dataset.root)")
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        classes, train = _scan_classes(root / "train")
        splits = {"train": train}
        for split in ("val", "test"):
            if (root / split).is_dir():
                splits[split] = _scan_classes(root / split, classes)[1]
        return RawSplits(classes, splits)
    classes, samples = _scan_classes(root)
    return RawSplits(classes, {"all": samples})


OFFICE31_DOMAINS = ("amazon", "webcam", "dslr")


@register_dataset("office31")
def _office31(root=None, download=False, domain=None, classes=None) -> RawSplits:
    """Office-31 (Saenko et al. 2010), one domain: `<root>/<domain>/images/<class>/*.jpg` (the original
    archive) or `<root>/<domain>/<class>/*.jpg`. `classes`: keep only these class names, or the first N
    (sorted) when an int; null = all 31. There is no stable public download, so download=true cannot fetch it."""
    if domain not in OFFICE31_DOMAINS:
        raise ConfigError(f"data.dataset.domain={domain!r}: office31 needs one of {list(OFFICE31_DOMAINS)}")
    if root is None:
        raise ConfigError("office31 needs data.dataset.root=DIR holding DIR/<domain>/[images/]<class>/*.jpg")
    root = Path(root).expanduser()
    folder = root / domain / "images" if (root / domain / "images").is_dir() else root / domain
    if not folder.is_dir():
        raise DataNotFoundError(
            f"office31: no folder {folder.resolve()} (looked for {root / domain}/images/<class>/*.jpg and "
            f"{root / domain}/<class>/*.jpg). Office-31 has no stable public download: get the archive "
            f"(Saenko et al. 2010, 'domain_adaptation_images') and unpack it so that {root}/{domain}/images/"
            f"<class>/*.jpg exists, or point data.dataset.root at the folder that holds {domain}/"
        )
    names, samples = _scan_classes(folder)
    if classes is None:
        return RawSplits(names, {"all": samples})
    if isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= len(names):
            raise ConfigError(f"data.dataset.classes={classes} must lie in [1, {len(names)}] (or be a list of names)")
        keep = names[:classes]
    else:
        keep = [str(c) for c in classes]
        unknown = sorted(set(keep) - set(names))
        if unknown:
            raise ConfigError(f"data.dataset.classes: {unknown} are not classes of {folder}; it has {names}")
        keep = sorted(set(keep))
    new_label = {names.index(name): i for i, name in enumerate(keep)}
    return RawSplits(keep, {"all": [(path, new_label[label]) for path, label in samples if label in new_label]})


# ---------------------------------------------------------------------------------------------


def _call_builder(name: str, builder: Callable, options: dict, where: str) -> RawSplits:
    accepted = [p for p in inspect.signature(builder).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{where}: dataset '{name}' has no option(s) {unknown}; its options are {accepted}")
    return builder(**options)


def _as_dataset(part, image_size, channels, cache: dict, where: str, train: bool = False):
    if isinstance(part, list):
        return cached_file_dataset(ImageFileDataset(part, image_size, channels), where=where, train=train, **cache)
    images, labels = part
    return TensorImageDataset(images, labels, image_size, channels)


def _labels_of(part) -> np.ndarray:
    if isinstance(part, list):
        return np.array([label for _, label in part])
    return np.asarray(part[1])


def _take(part, idx):
    if isinstance(part, list):
        return [part[i] for i in idx]
    images, labels = part
    return images[idx], np.asarray(labels)[idx]


def _concat(parts: list):
    if isinstance(parts[0], list):
        return [item for part in parts for item in part]
    images = [part[0] for part in parts]
    images = torch.cat([torch.as_tensor(i) for i in images]) if isinstance(images[0], torch.Tensor) else np.concatenate(images)
    return images, np.concatenate([np.asarray(part[1]) for part in parts])


def carve_fold(raw: RawSplits, fold: dict, val_fraction: float, split_seed: int) -> dict[str, Any]:
    """k-fold cross-validation (`cv.folds`): every split the source defines pooled, fold `index` of
    `folds` stratified seeded folds (`seed`) is the test split, val_fraction of the pool is carved from
    the other folds (stratified, split_seed) and the rest trains."""
    everything = _concat([raw.splits[name] for name in ("all", *SPLIT_NAMES) if name in raw.splits])
    labels = _labels_of(everything)
    try:
        folds = stratified_folds(labels, int(fold["folds"]), int(fold["seed"]))
    except ValueError as err:
        raise ConfigError(f"cv.folds={fold['folds']}: {err}") from None
    test = folds[int(fold["index"])]
    rest = np.setdiff1d(np.arange(len(labels)), test)
    share = val_fraction * len(labels) / max(1, len(rest))
    idx = stratified_split(labels[rest], {"val": min(1.0, share)}, split_seed)
    return {"train": _take(everything, rest[idx["rest"]]), "val": _take(everything, rest[idx["val"]]),
            "test": _take(everything, test)}


def carve_splits(raw: RawSplits, val_fraction: float, test_fraction: float, split_seed: int,
                 fold: dict | None = None) -> dict[str, Any]:
    """Fill in missing val/test splits by stratified seeded splitting (with `fold`: a cross-validation fold)."""
    if fold is not None:
        return carve_fold(raw, fold, val_fraction, split_seed)
    parts = dict(raw.splits)
    if "all" in parts:
        everything = parts.pop("all")
        idx = stratified_split(_labels_of(everything), {"test": test_fraction, "val": val_fraction}, split_seed)
        return {"train": _take(everything, idx["rest"]), "val": _take(everything, idx["val"]), "test": _take(everything, idx["test"])}
    if "val" not in parts:
        train = parts["train"]
        idx = stratified_split(_labels_of(train), {"val": val_fraction}, split_seed)
        parts["train"], parts["val"] = _take(train, idx["rest"]), _take(train, idx["val"])
    if "test" not in parts:
        parts["test"] = parts["val"]
    return parts


def load_dataset(
    spec: dict,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    where: str = "data.dataset",
    labels_needed: bool = True,
    cache: str = "auto",
    cache_dir: str | None = None,
    cache_max_gb: float | None = None,
    fold: dict | None = None,
) -> Splits:
    """Build the named dataset of `spec`, check it (`validate`) and return its converted train/val/test
    splits. `labels_needed=False` (labels only evaluate the method) turns a missing class into a warning;
    `cache*`: how image files are decoded (`decoded_cache`); `fold` {index, folds, seed}: a k-fold cross-validation
    split instead (`carve_fold`)."""
    options = dict(spec)
    name = options.pop("name", None)
    if name not in DATASETS:
        raise ConfigError(f"{where}.name={name!r} is not a registered dataset; choices: {sorted(DATASETS)}")
    raw = _call_builder(name, DATASETS[name], options, where)
    files = ", ".join(str(spec[k]) for k in ("path", "train_path", "test_path", "root") if spec.get(k))
    where = f"{where} ({name}{': ' + files if files else ''})"
    raw = _checked(raw, image_size, where)
    parts = carve_splits(raw, val_fraction, test_fraction, split_seed, fold)
    check_cache_option(cache, cache_max_gb)
    cache_options = dict(cache=cache, cache_dir=cache_dir, cache_max_gb=cache_max_gb)
    datasets = {split: _as_dataset(parts[split], image_size, channels, cache_options, f"{where} {split}",
                                   train=split == "train")
                for split in SPLIT_NAMES}
    if len(datasets["train"]) == 0:
        raise DataFormatError(f"{where}: the train split is empty (lower data.val_fraction / test_fraction)")
    check_classes(datasets["train"].labels.numpy(), {s: datasets[s].labels.numpy() for s in ("val", "test")},
                  raw.classes, where, labels_needed=labels_needed)
    return Splits(name, raw.classes, datasets["train"], datasets["val"], datasets["test"])


def _checked(raw: RawSplits, image_size: int | None, where: str) -> RawSplits:
    """Each split of a builder's output through `validate` (whatever the builder: one place)."""
    splits = {}
    for split, part in raw.splits.items():
        at = f"{where} split '{split}'"
        if isinstance(part, list):
            if not part:
                raise DataFormatError(f"{at}: holds 0 images")
            check_image_files(part, image_size, at)
            splits[split] = part
        else:
            images, labels = part
            check_counts(len(images), len(labels), at)
            splits[split] = (check_images(images, at), check_labels(labels, at))
    return RawSplits(raw.classes, splits)
