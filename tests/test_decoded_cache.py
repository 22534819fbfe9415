"""Image folders decoded once (`data.cache`): the same values as reading files per step, a disk cache that
a changed file invalidates, the memory budget, and corrupt files named at decode time."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import decoded_cache
from datamodules.datasets import ImageFileDataset, TensorImageDataset
from datamodules.errors import ConfigError, DataFormatError
from datamodules.registry import load_dataset

RNG = np.random.default_rng(0)


def write_folder(root, per_class=6, size=10, ext="png"):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(RNG.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(root / c / f"{i}.{ext}")


def load(root, **options):
    spec = {"name": "imagefolder", "root": str(root)}
    return load_dataset(spec, image_size=8, channels=3, val_fraction=0.0, test_fraction=0.0, **options)


def items(dataset):
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), [dataset[i][1] for i in range(len(dataset))]


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_decoded_once_gives_the_values_of_per_step_reading(tmp_path, ext):
    write_folder(tmp_path / "data", ext=ext)
    per_step = load(tmp_path / "data", cache="none").train
    decoded = load(tmp_path / "data", cache="memory").train
    assert isinstance(per_step, ImageFileDataset) and isinstance(decoded, TensorImageDataset)
    x_file, y_file = items(per_step)
    x_mem, y_mem = items(decoded)
    assert y_file == y_mem
    assert torch.equal(x_file, x_mem)


def test_disk_cache_is_reused_and_a_changed_file_rebuilds_it(tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    first = load(tmp_path / "data", cache="disk", cache_dir=str(cache_dir)).train
    files = sorted((cache_dir / "decoded").glob("*.npy"))
    assert len(files) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache holds this folder")

    monkeypatch.setattr(decoded_cache, "decode_all", no_decoding)
    second = load(tmp_path / "data", cache="disk", cache_dir=str(cache_dir)).train  # from the file
    assert torch.equal(first.images, second.images)
    monkeypatch.undo()

    # one file changes (new pixels, new modification time): a new key, the new pixels
    path = sorted((tmp_path / "data" / "dog").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    third = load(tmp_path / "data", cache="disk", cache_dir=str(cache_dir)).train
    assert len(sorted((cache_dir / "decoded").glob("*.npy"))) == 2
    assert not torch.equal(first.images, third.images)
    x_file, _ = items(load(tmp_path / "data", cache="none").train)
    assert torch.equal(items(third)[0], x_file)


def test_a_truncated_cache_file_is_rebuilt(tmp_path):
    write_folder(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    first = load(tmp_path / "data", cache="disk", cache_dir=str(cache_dir)).train
    (npy,) = (cache_dir / "decoded").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    again = load(tmp_path / "data", cache="disk", cache_dir=str(cache_dir)).train
    assert torch.equal(first.images, again.images)


def test_over_the_memory_budget_auto_reads_files_per_step_and_says_so(tmp_path, caplog):
    write_folder(tmp_path / "data", per_class=20)  # 40 x 3 x 8 x 8 = 7,680 bytes decoded
    with caplog.at_level(logging.INFO, logger="datamodules.decoded_cache"):
        train = load(tmp_path / "data", cache="auto", cache_max_gb=5e-6).train  # a 5,000-byte budget
    assert isinstance(train, ImageFileDataset)
    assert "reading the images from their files at every step" in caplog.text
    assert not list((tmp_path / "cache").glob("**/*.npy"))
    with pytest.raises(ConfigError, match="data.cache=memory.*over the cache budget"):
        load(tmp_path / "data", cache="memory", cache_max_gb=5e-6)
    assert isinstance(load(tmp_path / "data", cache="auto", cache_max_gb=1e-4).train, TensorImageDataset)


def test_a_corrupt_image_is_named_at_decode_time_and_nothing_is_cached(tmp_path):
    write_folder(tmp_path / "data")
    path = tmp_path / "data" / "cat" / "2.png"
    path.write_bytes(path.read_bytes()[:60])  # the header reads, the pixels do not
    with pytest.raises(DataFormatError, match="2.png"):
        load(tmp_path / "data", cache="disk", cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("**/*.npy"))


def test_unknown_cache_option_lists_the_choices(tmp_path):
    write_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match="data.cache='ram'.*auto, memory, disk, none"):
        load(tmp_path / "data", cache="ram")
    with pytest.raises(ConfigError, match="data.cache_max_gb=0"):
        load(tmp_path / "data", cache_max_gb=0)


def test_workers_default_to_none_in_memory_and_to_free_cores_for_files(tmp_path):
    from datamodules.labeled import LabeledDataModule

    write_folder(tmp_path / "data")
    spec = {"name": "imagefolder", "root": str(tmp_path / "data")}
    for cache, expected in [("memory", 0), ("none", min(4, max(0, os.cpu_count() - torch.get_num_threads())))]:
        dm = LabeledDataModule(dataset=spec, image_size=8, channels=3, batch_size=4, cache=cache)
        dm.setup("fit")
        assert dm.train_dataloader().num_workers == expected


def test_simplejpeg_decoding_matches_pillow_draft_decoding(tmp_path, monkeypatch):
    pytest.importorskip("simplejpeg")
    from datamodules import datasets

    smooth = np.kron(RNG.integers(0, 256, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # a 96 px photo-like image
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=90)
    files = ImageFileDataset([(tmp_path / "photo.jpg", 0)], image_size=24, channels=3)
    monkeypatch.setattr(datasets, "JPEG_DECODER", "simplejpeg")
    fast = files[0][0]
    monkeypatch.setattr(datasets, "JPEG_DECODER", "pillow")
    draft = files[0][0]
    assert fast.shape == draft.shape == (3, 24, 24)
    assert (fast - draft).abs().mul(127.5).mean() < 2.0  # the same DCT scaling; IDCT rounding differs slightly
