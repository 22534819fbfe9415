"""Textured colour digits for the SSL benchmark: `npz` + `blend_with_photos` (MNIST blended with
photo patches the way `digits_m` is made), and the presets that use it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose

from datamodules import embedded
from datamodules.errors import DataFormatError
from datamodules.registry import DATASETS, load_dataset

RNG = np.random.default_rng(0)


@pytest.fixture
def grey_npz(tmp_path):
    images = RNG.integers(0, 256, (30, 28, 28)).astype(np.uint8)
    labels = np.arange(30) % 10
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    return tmp_path / "d.npz", images, labels


def test_blend_is_the_digits_m_construction_and_keeps_labels(grey_npz):
    path, images, labels = grey_npz
    raw = DATASETS["npz"](path=str(path), blend_with_photos=True, blend_seed=3)
    blended, kept = raw.splits["all"]
    assert blended.dtype == torch.uint8 and tuple(blended.shape) == (30, 3, 28, 28)
    np.testing.assert_array_equal(kept, labels)
    # exactly embedded.blend_with_photos, which digits_m applies to the sklearn digits
    expected = embedded.blend_with_photos(torch.as_tensor(images).unsqueeze(1), 3)
    assert torch.equal(blended, expected)
    # |patch - digit|: a white digit pixel (255) gives 255 - patch, a black one the patch itself
    assert not torch.equal(blended[:, 0], blended[:, 1])  # colour, not grey copies


def test_blend_is_deterministic_per_seed(grey_npz):
    path, _, _ = grey_npz
    spec = {"name": "npz", "path": str(path), "blend_with_photos": True}
    a = load_dataset({**spec, "blend_seed": 0}, val_fraction=0.0, test_fraction=0.2)
    b = load_dataset({**spec, "blend_seed": 0}, val_fraction=0.0, test_fraction=0.2)
    c = load_dataset({**spec, "blend_seed": 1}, val_fraction=0.0, test_fraction=0.2)
    assert a.shape == (3, 28, 28)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.equal(a.train.labels, c.train.labels)  # the split does not depend on the blend


def test_default_npz_is_unchanged(grey_npz):
    path, images, _ = grey_npz
    raw = DATASETS["npz"](path=str(path))
    np.testing.assert_array_equal(raw.splits["all"][0], images)
    assert load_dataset({"name": "npz", "path": str(path)}).shape == (1, 28, 28)


def test_blend_rejects_colour_images(tmp_path):
    np.savez(tmp_path / "c.npz", images=RNG.integers(0, 256, (10, 8, 8, 3)).astype(np.uint8), labels=np.arange(10))
    with pytest.raises(DataFormatError, match="blend_with_photos=true needs grey uint8"):
        load_dataset({"name": "npz", "path": str(tmp_path / "c.npz"), "blend_with_photos": True})


@pytest.mark.parametrize("method", ["simclr", "moco", "rotation"])
def test_textured_presets_compose(method):
    cfg = compose("experiment=ssl_mnist_m", f"model={method}")
    assert cfg.data.dataset.name == "npz" and cfg.data.dataset.blend_with_photos is True
    assert cfg.model.backbone.widths == [16, 32, 64]
    cfg = compose("experiment=ssl_digits_m", f"model={method}")
    assert cfg.data.dataset.name == "digits_m" and cfg.model.backbone.widths == [16, 32, 64]
