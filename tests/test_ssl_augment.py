"""Augmentations: parameters in range, independent per image, and the batched (on-device) path
equal to the per-sample torchvision v2 path for a fixed parameter draw."""
from __future__ import annotations

import pytest
import torch

from datamodules.augment import (
    AugmentSpec, ViewAugmenter, all_rotations, rotate90_batch, rotate90_single,
)
from datamodules.errors import ConfigError
from datamodules.multiview import MultiViewDataModule


def _images(n, c, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def _augmenter(c, size, **kw):
    return ViewAugmenter(AugmentSpec(**{"blur_p": 0.5, "invert_p": 0.3, "channel_perm_p": 0.5, **kw}),
                         image_size=size, channels=c)


def test_strengths_scale_with_image_size_and_channels():
    grey_small = AugmentSpec().resolve(28, 1)
    colour_big = AugmentSpec().resolve(96, 3)
    assert grey_small.grayscale_p == 0 and colour_big.grayscale_p == 0.2
    assert grey_small.blur_p == 0 and colour_big.blur_p == 0.5
    assert grey_small.crop_scale[0] > colour_big.crop_scale[0] == 0.08
    assert colour_big.blur_kernel == 9 and grey_small.blur_kernel % 2 == 1
    with pytest.raises(ConfigError, match="backend"):
        AugmentSpec(backend="gpu")
    with pytest.raises(ConfigError, match="options"):
        AugmentSpec.from_config({"flip": 0.5})


@pytest.mark.parametrize("channels", [1, 3])
def test_parameters_in_range(channels):
    aug = _augmenter(channels, 24)
    n, size = 4000, 24
    p = aug.sample(n, size, size, torch.Generator().manual_seed(0))
    s = aug.spec
    assert (p.top >= 0).all() and (p.left >= 0).all()
    assert (p.top + p.height <= size).all() and (p.left + p.width <= size).all()
    area = (p.height * p.width).float() / size**2
    assert area.min() >= s.crop_scale[0] - 0.1 and area.max() <= 1.0
    ratio = p.width.float() / p.height.float()
    assert ratio.min() >= s.crop_ratio[0] - 0.2 and ratio.max() <= s.crop_ratio[1] + 0.2
    k = 0.8 * s.jitter_strength
    for f in (p.brightness, p.contrast):
        assert f.min() >= 1 - k and f.max() <= 1 + k
    assert (p.sigma >= s.blur_sigma[0]).all() and (p.sigma <= s.blur_sigma[1]).all()
    for flag, prob in ((p.flip, s.flip_p), (p.jitter, s.jitter_p), (p.blur, s.blur_p), (p.gray, s.grayscale_p),
                       (p.invert, s.invert_p)):
        assert abs(flag.float().mean().item() - prob) < 0.04
    if channels == 3:
        assert p.hue.abs().max() <= 0.2 * s.jitter_strength
        assert abs((p.perm > 0).float().mean().item() - s.channel_perm_p) < 0.04
        assert torch.bincount(p.perm[p.perm > 0], minlength=6)[1:].min() > 0.15 * (p.perm > 0).sum()  # 5 orders alike
    else:  # grey: saturation/hue/grayscale/channel order are not drawn
        assert (p.saturation == 1).all() and (p.hue == 0).all() and not p.gray.any() and not p.perm.any()


def test_draws_are_independent_per_image():
    aug = _augmenter(3, 16)
    same = _images(1, 3, 16).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    views = aug.batch(same)
    flat = views.flatten(1)
    distinct = torch.cdist(flat, flat)[~torch.eye(64, dtype=torch.bool)]
    assert (distinct > 1e-3).float().mean() > 0.97  # the same image gives different views
    p = aug.sample(5000, 16, 16, torch.Generator().manual_seed(1))
    for a in (p.flip.float(), p.brightness, p.top.float(), p.sigma):
        corr = torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1]
        assert abs(corr) < 0.06  # neighbours in the batch are not correlated
    second = aug.batch(same)
    assert not torch.allclose(views, second)


@pytest.mark.parametrize("channels,size,out", [(1, 28, 28), (3, 32, 32), (3, 40, 24)])
def test_batched_equals_per_sample_torchvision_for_a_fixed_draw(channels, size, out):
    spec = AugmentSpec(blur_p=0.5, blur_kernel=5, jitter_strength=1.0, invert_p=0.5, channel_perm_p=0.5)
    aug = ViewAugmenter(spec, image_size=out, channels=channels)
    x = _images(24, channels, size).float() / 255
    p = aug.sample(len(x), size, size, torch.Generator().manual_seed(3))
    assert p.jitter.any() and p.blur.any() and p.flip.any() and p.invert.any() and not p.invert.all()
    assert channels == 1 or len(p.perm.unique()) > 2
    batched = aug.apply(x, p)
    single = torch.stack([aug.single(x[i], p[i]) for i in range(len(x))])
    assert batched.shape == (24, channels, out, out)
    assert (batched - single).abs().max() < 1e-4


def test_rotation_on_device_matches_torchvision():
    x = _images(8, 3, 12).float()
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    batched = rotate90_batch(x, k)
    for i in range(8):
        assert torch.equal(batched[i], rotate90_single(x[i], int(k[i])))
    rotated, labels = all_rotations(x[:2])
    assert rotated.shape == (8, 3, 12, 12) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[2], torch.rot90(x[0], 1, (-2, -1)))


@pytest.mark.parametrize("backend", ["batched", "per_sample"])
def test_multiview_datamodule_batches(backend):
    dm = MultiViewDataModule({"name": "digits"}, n_views=2, augment={"backend": backend}, batch_size=16,
                             eval_batch_size=64, knn_bank_size=100)
    dm.setup("fit")
    assert dm.backend == backend
    batch = next(iter(dm.train_dataloader()))
    views, y = dm.on_after_batch_transfer(batch, 0)
    assert len(views) == 2 and views[0].shape == (16, 1, 28, 28) and y.shape == (16,)
    assert views[0].dtype == torch.float32 and -1 <= views[0].min() and views[0].max() <= 1
    assert not torch.allclose(views[0], views[1])
    scored, bank = dm.val_dataloader()
    assert len(bank.dataset) == 100
    x, _ = next(iter(scored))
    assert torch.equal(dm.on_after_batch_transfer((x, _), 0)[0], x)  # evaluation images stay clean
