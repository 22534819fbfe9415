"""Random affine augmentation of labeled training batches (`data.train_augment`)."""
from __future__ import annotations

import math

import pytest
import torch

from datamodules.errors import ConfigError
from datamodules.labeled import LabeledDataModule
from datamodules.train_augment import AffineAugment
from tests.conftest import read_results, train_in_process


def white_square(n=1, size=16):
    return torch.ones(n, 1, size, size)


def test_identity_draw_leaves_images_unchanged():
    x = torch.rand(3, 1, 12, 12) * 2 - 1
    out = AffineAugment()(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_zoom_out_shrinks_the_image_inside_a_black_frame():
    aug = AffineAugment(scale=(0.5, 0.5))
    out = aug(white_square(size=16))[0, 0]
    assert torch.allclose(out[6:10, 6:10], torch.ones(4, 4))  # centre still white
    assert torch.allclose(out[:3], -torch.ones(3, 16)) and torch.allclose(out[:, -3:], -torch.ones(16, 3))
    # a half-size white square covers a quarter of the frame
    assert ((out + 1) / 2).mean().item() == pytest.approx(0.25, abs=0.02)


def test_shift_moves_content_right_and_down():
    x = -torch.ones(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0  # one bright pixel
    params = {"scale": torch.ones(1), "angle": torch.zeros(1), "shift": torch.tensor([[0.25, 0.5]]), "flip": torch.zeros(1, dtype=torch.bool)}
    out = AffineAugment().apply(x, params)[0, 0]
    row, col = divmod(int(out.argmax()), 16)
    assert (row, col) == (8 + 4, 8 + 2)  # shift in [-1, 1] units: 0.5 * 16 / 2 = 4 rows, 0.25 * 8 = 2 columns


def test_rotation_matches_torch_rot90_for_90_degrees():
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    params = {"scale": torch.ones(1), "angle": torch.tensor([math.pi / 2]), "shift": torch.zeros(1, 2), "flip": torch.zeros(1, dtype=torch.bool)}
    out = AffineAugment().apply(x, params)
    # positive angle = counter-clockwise in image coordinates with y pointing down -> torch.rot90(k=-1)
    assert torch.allclose(out, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5)


def test_draws_lie_in_range_and_differ_per_image():
    aug = AffineAugment(scale=(0.6, 0.9), translate=0.1, degrees=15, flip_p=0.5)
    p = aug.draw(500, torch.Generator().manual_seed(0))
    assert p["scale"].min() >= 0.6 and p["scale"].max() <= 0.9
    assert p["shift"].abs().max() <= 0.2 and p["angle"].abs().max() <= math.radians(15)
    assert 0.4 < p["flip"].float().mean() < 0.6
    assert len(torch.unique(p["scale"])) == 500
    out = aug(torch.rand(1, 1, 16, 16).expand(4, 1, 16, 16).contiguous(), torch.Generator().manual_seed(1))
    assert not torch.allclose(out[0], out[1])  # the same image, four different draws


@pytest.mark.parametrize("bad, words", [({"scale": [0.9, 0.5]}, "scale"), ({"padding": "wrap"}, "zeros"),
                                        ({"zoom": 1}, "options"), ({"flip_p": 2}, "flip_p")])
def test_bad_options_are_named(bad, words):
    with pytest.raises(ConfigError, match=words):
        AffineAugment.from_config(bad)


def test_supervised_run_with_train_augment_changes_training_batches_only(tmp_path):
    """A run trains with the option; the datamodule augments only while the trainer is training."""
    train_in_process("model=supervised", "data=digits", "debug=smoke", "data.image_size=16",
                              "data.train_augment={scale:[0.6,1.0],translate:0.1}", run_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "completed"
    dm = LabeledDataModule({"name": "digits"}, image_size=16, train_augment={"scale": [0.5, 0.5]})
    dm.setup("fit")
    x = dm.splits.train[0][0].unsqueeze(0)
    y = torch.zeros(1, dtype=torch.long)

    class FakeTrainer:
        training, global_rank = False, 0

    dm.trainer = FakeTrainer()
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], x)  # evaluation: untouched
    FakeTrainer.training = True
    zoomed = dm.on_after_batch_transfer((x, y), 0)[0]
    assert not torch.equal(zoomed, x) and (zoomed[..., :3, :] == -1).all()  # training: zoomed out, black border


def test_pair_batches_augment_source_and_target_images_not_labels():
    """Domain adaptation: both domains' training images get their own draws; labels pass through."""
    from datamodules.pair import PairDataModule

    dm = PairDataModule({"name": "digits"}, {"name": "digits_m"}, channels=3, train_augment={"scale": [0.5, 0.5]})
    dm.setup("fit")
    xs = torch.stack([dm.source.train[i][0] for i in range(4)])
    xt = torch.stack([dm.target.train[i][0] for i in range(4)])
    ys = torch.arange(4)

    class FakeTrainer:
        training, global_rank = True, 0

    dm.trainer = FakeTrainer()
    out = dm.on_after_batch_transfer({"source": (xs, ys), "target": xt}, 0)
    (xs_aug, ys_out), xt_aug = out["source"], out["target"]
    assert torch.equal(ys_out, ys)
    for before, after in ((xs, xs_aug), (xt, xt_aug)):
        assert after.shape == before.shape and not torch.equal(after, before)
        assert (after[..., :3, :] == -1).all()  # zoomed out to half size: black border
