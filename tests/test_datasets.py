"""Every registered dataset loads from small files written in its real on-disk format, offline.

torchvision checks MD5 sums of CIFAR, SVHN and STL-10 files. These tests keep that check running:
they register the checksum of the small file they wrote (as a download of that file would), and a
separate test shows that a file with the wrong checksum is refused with a clear message.
"""
from __future__ import annotations

import bz2
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import ConfigError, DataFormatError, DataNotFoundError
from datamodules.registry import DATASETS, load_dataset

RNG = np.random.default_rng(0)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def balanced_labels(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n) % classes


# ------------------------------------------------------------------ writers of real formats


def write_idx(path, array: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root, folder: str, n_train=40, n_test=20) -> None:
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", balanced_labels(n))


def write_usps(root, n_train=40, n_test=20) -> None:
    """libsvm text, bz2-compressed: `label idx:value ...`, labels 1..10, values in [-1, 1]."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("usps.bz2", n_train), ("usps.t.bz2", n_test)):
        lines = []
        for label in balanced_labels(n):
            values = RNG.uniform(-1, 1, 256)
            lines.append(f"{label + 1} " + " ".join(f"{i + 1}:{v:.4f}" for i, v in enumerate(values)))
        (root / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def write_svhn(root, monkeypatch, n_train=40, n_test=20) -> None:
    import scipy.io
    from torchvision.datasets import SVHN

    root.mkdir(parents=True, exist_ok=True)
    split_list = {k: list(v) for k, v in SVHN.split_list.items()}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1)  # SVHN stores digit 0 as class 10
        path = root / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": RNG.integers(0, 256, (32, 32, 3, n)).astype(np.uint8), "y": y})
        split_list[split][2] = md5(path)
    monkeypatch.setattr(SVHN, "split_list", split_list)


def write_cifar(root, monkeypatch, hundred: bool, n_per_file=20) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"

    def dump(name: str, n: int) -> list:
        entry = {"data": RNG.integers(0, 256, (n, 3072)).astype(np.uint8), label_key: list(balanced_labels(n, num_classes))}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        return [name, md5(folder / name)]

    per_file = 200 if hundred else n_per_file  # two per class: the carved val split leaves one in train
    train_list = [dump(name, per_file) for name, _ in cls.train_list]
    test_list = [dump(name, per_file) for name, _ in cls.test_list]
    names = [f"class_{i}" for i in range(num_classes)]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    meta = {**cls.meta, "md5": md5(folder / cls.meta["filename"])}
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)


def write_stl10(root, monkeypatch, n_train=20, n_test=10) -> None:
    """Binary files: images (N, 3, 96, 96) uint8 column-major per channel, labels uint8 1..10."""
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train_X.bin": RNG.integers(0, 256, (n_train, 3, 96, 96)).astype(np.uint8),
        "train_y.bin": (balanced_labels(n_train) + 1).astype(np.uint8),
        "unlabeled_X.bin": RNG.integers(0, 256, (4, 3, 96, 96)).astype(np.uint8),
        "test_X.bin": RNG.integers(0, 256, (n_test, 3, 96, 96)).astype(np.uint8),
        "test_y.bin": (balanced_labels(n_test) + 1).astype(np.uint8),
    }
    for name, array in files.items():
        (folder / name).write_bytes(array.tobytes())
    monkeypatch.setattr(STL10, "train_list", [[n, md5(folder / n)] for n, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[n, md5(folder / n)] for n, _ in STL10.test_list])


def write_png_folder(root, classes=("cat", "dog"), per_class=10, size=12, mode="RGB") -> None:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(RNG.integers(0, 256, shape).astype(np.uint8), mode).save(root / c / f"{i}.png")


# ------------------------------------------------------------------ loading tests


def check_splits(splits, num_classes, shape, n_test=None):
    assert splits.num_classes == num_classes
    assert splits.shape == shape
    assert len(splits.train) > 0 and len(splits.val) > 0 and len(splits.test) > 0
    if n_test is not None:
        assert len(splits.test) == n_test
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert 0 <= y < num_classes


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path, name, folder):
    write_mnist_like(tmp_path, folder)
    splits = load_dataset({"name": name, "root": str(tmp_path), "download": False})
    check_splits(splits, 10, (1, 28, 28), n_test=20)
    assert len(splits.train) + len(splits.val) == 40


def test_mnist_m_blends_mnist_with_photos(tmp_path):
    write_mnist_like(tmp_path, "MNIST")
    splits = load_dataset({"name": "mnist_m", "root": str(tmp_path), "download": False})
    check_splits(splits, 10, (3, 28, 28), n_test=20)


def test_usps_bz2(tmp_path):
    write_usps(tmp_path)
    splits = load_dataset({"name": "usps", "root": str(tmp_path), "download": False}, image_size=28)
    check_splits(splits, 10, (1, 28, 28), n_test=20)


def test_svhn_mat(tmp_path, monkeypatch):
    write_svhn(tmp_path, monkeypatch)
    splits = load_dataset({"name": "svhn", "root": str(tmp_path), "download": False})
    check_splits(splits, 10, (3, 32, 32), n_test=20)
    assert sorted(set(splits.test.labels.tolist())) == list(range(10))  # label 10 mapped to 0


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, monkeypatch, hundred):
    write_cifar(tmp_path, monkeypatch, hundred)
    name = "cifar100" if hundred else "cifar10"
    splits = load_dataset({"name": name, "root": str(tmp_path), "download": False}, channels=1, image_size=16)
    check_splits(splits, 100 if hundred else 10, (1, 16, 16))
    assert splits.classes[0] == "class_0"  # names come from the meta pickle


def test_stl10_binaries(tmp_path, monkeypatch):
    write_stl10(tmp_path, monkeypatch)
    splits = load_dataset({"name": "stl10", "root": str(tmp_path), "download": False}, image_size=32)
    check_splits(splits, 10, (3, 32, 32), n_test=10)


def test_npz_single_file_is_split_stratified(tmp_path):
    images = RNG.integers(0, 256, (100, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=balanced_labels(100))
    splits = load_dataset({"name": "npz", "path": str(tmp_path / "d.npz")}, val_fraction=0.1, test_fraction=0.2)
    check_splits(splits, 10, (1, 8, 8), n_test=20)
    assert np.bincount(splits.test.labels.numpy()).tolist() == [2] * 10
    again = load_dataset({"name": "npz", "path": str(tmp_path / "d.npz")}, val_fraction=0.1, test_fraction=0.2)
    assert torch.equal(splits.test.images, again.test.images)  # seeded: the same split every time


def test_npz_train_and_test_files(tmp_path):
    for part, n in (("train", 50), ("test", 30)):
        np.savez(tmp_path / f"{part}.npz", images=RNG.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                 labels=balanced_labels(n))
    splits = load_dataset({"name": "npz", "train_path": str(tmp_path / "train.npz"), "test_path": str(tmp_path / "test.npz")})
    check_splits(splits, 10, (3, 8, 8), n_test=30)


def test_imagefolder_without_split_folders(tmp_path):
    write_png_folder(tmp_path)
    splits = load_dataset({"name": "imagefolder", "root": str(tmp_path)}, image_size=16, test_fraction=0.2)
    check_splits(splits, 2, (3, 16, 16), n_test=4)
    assert splits.classes == ["cat", "dog"]


def test_imagefolder_with_split_folders(tmp_path):
    write_png_folder(tmp_path / "train", per_class=6, mode="L")
    write_png_folder(tmp_path / "test", per_class=3, mode="L")
    splits = load_dataset({"name": "imagefolder", "root": str(tmp_path)})
    check_splits(splits, 2, (1, 12, 12), n_test=6)


def test_embedded_digits_are_deterministic():
    a = load_dataset({"name": "digits_m", "seed": 3})
    b = load_dataset({"name": "digits_m", "seed": 3})
    c = load_dataset({"name": "digits_m", "seed": 4})
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    digits = load_dataset({"name": "digits"})
    check_splits(digits, 10, (1, 28, 28))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "usps", "svhn", "cifar10", "cifar100", "stl10", "mnist_m"])
def test_missing_torchvision_data_names_path_and_fetch_command(tmp_path, name):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset({"name": name, "root": str(tmp_path / "nowhere"), "download": False})
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "download=true" in message and "is missing" in message


def test_corrupt_file_fails_torchvision_integrity_check(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch, hundred=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"truncated")
    with pytest.raises(DataNotFoundError, match="integrity check"):
        load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False})


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "imagenet_typo"})
    assert "digits" in str(err.value) and "imagefolder" in str(err.value)


def test_unknown_dataset_option_lists_options():
    with pytest.raises(ConfigError, match="has no option"):
        load_dataset({"name": "digits", "pathh": "x"})


def test_every_registered_dataset_is_covered_here():
    covered = {"mnist", "fashion_mnist", "usps", "svhn", "cifar10", "cifar100", "stl10", "mnist_m", "npz",
               "imagefolder", "digits", "digits_m", "office31",  # office31: tests/test_pretrained.py
               "rotated_mnist"}  # tests/test_domain_generalization.py
    assert set(DATASETS) <= covered | {n for n in DATASETS if n.startswith("test_")}


def test_empty_image_folder(tmp_path):
    with pytest.raises(DataFormatError, match="no class subfolders"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path)})


def test_image_folder_with_loose_files_or_empty_class(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataFormatError, match="1 image files lie directly"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path)})
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataFormatError, match=r"\['cat'\] contain no images"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path)})


def test_missing_image_folder_and_npz(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path / "nope")})
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset({"name": "npz", "path": str(tmp_path / "nope.npz")})


def test_npz_without_expected_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 4, 4)))
    with pytest.raises(DataFormatError, match="lacks arrays"):
        load_dataset({"name": "npz", "path": str(tmp_path / "bad.npz")})


def test_corrupt_image_names_the_file(tmp_path):
    write_png_folder(tmp_path, per_class=5)
    good = (tmp_path / "dog" / "3.png").read_bytes()
    (tmp_path / "dog" / "3.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="3.png"):  # found when the folder is loaded, before training
        load_dataset({"name": "imagefolder", "root": str(tmp_path)}, test_fraction=0.0, val_fraction=0.0)
    (tmp_path / "dog" / "3.png").write_bytes(good[: len(good) // 2])  # a valid header, truncated pixels
    with pytest.raises(DataFormatError, match="3.png"):  # the folder is decoded once (data.cache=auto), at load
        load_dataset({"name": "imagefolder", "root": str(tmp_path)}, test_fraction=0.0, val_fraction=0.0)
    splits = load_dataset({"name": "imagefolder", "root": str(tmp_path)}, test_fraction=0.0, val_fraction=0.0,
                          cache="none")
    with pytest.raises(DataFormatError, match="3.png"):  # read per step: when the image is first read
        [splits.train[i] for i in range(len(splits.train))]
