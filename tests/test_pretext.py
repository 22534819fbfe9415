"""Pretext tasks (issue 20): each pretext target unit-tested, smoke fits of the options tests/test_runner.py does
not reach, the too-small-image and grey-data errors, and the DCGAN (the method that mixes examples through BatchNorm, with two optimizers)
on two CPU processes."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import read_results, run_cli, train_in_process

from datamodules.errors import ConfigError
from lightning_modules.components import pretext as P
from lightning_modules.components.adversarial import (
    call_frozen,
    discriminator_loss,
    generator_loss,
)

# ---- jigsaw permutations -----------------------------------------------------------------------------------


def test_jigsaw_permutations_are_deterministic_distinct_and_far_apart():
    perms = P.jigsaw_permutations(100, seed=0)
    assert perms.shape == (100, 9) and torch.equal(perms, P.jigsaw_permutations(100, seed=0))
    assert not torch.equal(perms[:10], P.jigsaw_permutations(10, seed=1))
    assert all(sorted(p.tolist()) == list(range(9)) for p in perms)  # each row is a permutation
    dist = P.hamming(perms, perms) + 99 * torch.eye(100, dtype=torch.long)
    chosen_min = int(dist.min())
    # 100 random permutations: their closest pair is much nearer than the greedy set's
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    rand_min = int((P.hamming(rand, rand) + 99 * torch.eye(100, dtype=torch.long)).min())
    assert chosen_min >= 6 and chosen_min > rand_min
    assert int(P.hamming(perms[:1], perms[:1])) == 0
    with pytest.raises(ConfigError, match="num_permutations"):
        P.jigsaw_permutations(0)


# ---- tiles and positions -----------------------------------------------------------------------------------


def coordinates(size: int) -> torch.Tensor:
    """(1, 2, S, S): channel 0 = row index, channel 1 = column index of every pixel."""
    r = torch.arange(size, dtype=torch.float32)
    return torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size)])[None]


def test_tiles_lie_in_their_cells_with_a_gap_and_jitter():
    x = coordinates(30).repeat(64, 1, 1, 1)  # cells of 10 px, tiles of 8 px
    g = torch.Generator().manual_seed(0)
    tiles = P.cut_tiles(x, 3, gap=0.2, jitter=True, generator=g)
    assert tiles.shape == (64, 9, 2, 8, 8)
    for k in range(9):
        rows, cols = tiles[:, k, 0], tiles[:, k, 1]
        assert rows.min() >= (k // 3) * 10 and rows.max() <= (k // 3) * 10 + 9  # inside cell (k // 3, k % 3)
        assert cols.min() >= (k % 3) * 10 and cols.max() <= (k % 3) * 10 + 9
        assert torch.all(rows[:, 1:, 0] - rows[:, :-1, 0] == 1)  # a contiguous crop
    tops = tiles[:, :, 0, 0, 0]
    assert len(torch.unique(tops[:, 0])) == 3  # jitter: offsets 0, 1, 2 inside the cell
    centred = P.cut_tiles(x[:1], 3, gap=0.2, jitter=False)
    assert centred[0, 4, 0, 0, 0] == 11 and centred[0, 4, 1, 0, 0] == 11  # centre tile, offset 1


def test_neighbour_positions_surround_the_centre():
    tiles = P.cut_tiles(coordinates(30), 3, gap=0.2, jitter=False)[0]
    centre = tiles[P.CENTRE, :, 0, 0]
    offsets = [((tiles[k, :, 0, 0] - centre) / 10).long().tolist() for k in P.NEIGHBOURS]
    assert offsets == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]]


def test_images_too_small_for_tiles_fail_naming_the_minimum_size():
    P.check_tile_size(24, 3, 0.2, 6, "jigsaw")  # 8 px cells, 6 px tiles: fits
    with pytest.raises(ConfigError, match=r"minimum size is 21 px"):
        P.check_tile_size(16, 3, 0.2, 6, "jigsaw")
    P.check_tile_size(21, 3, 0.2, 6, "jigsaw")
    assert P.tile_size(21, 3, 0.2) == 6


# ---- masks -------------------------------------------------------------------------------------------------


def test_centre_and_random_masks():
    m = P.centre_mask(2, 28, 0.5)
    assert m.shape == (2, 1, 28, 28) and m.sum() == 2 * 14 * 14
    assert m[0, 0, 7:21, 7:21].all() and m[0, 0, :7].sum() == 0
    g = torch.Generator().manual_seed(0)
    r = P.random_square_mask(50, 28, 0.5, generator=g)
    assert torch.all(r.sum(dim=(1, 2, 3)) == 14 * 14)
    corners = r[:, 0].flatten(1).argmax(1)  # first masked pixel of each image
    assert len(torch.unique(corners)) > 10


def test_denoising_corruption():
    x = torch.ones(4, 1, 50, 50)
    g = torch.Generator().manual_seed(0)
    masked = P.corrupt(x, "masking", 0.3, g)
    assert abs(float((masked == 0).float().mean()) - 0.3) < 0.03
    assert P.corrupt(x, "none", 0.3) is x
    assert P.corrupt(x, "gaussian", 0.5, g).max() <= 1.0


# ---- colour targets ----------------------------------------------------------------------------------------


def test_yuv_roundtrip_and_chroma_classes():
    x = torch.rand(3, 3, 5, 5) * 2 - 1
    assert torch.allclose(P.yuv_to_rgb(P.rgb_to_yuv(x)), x, atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.3)
    uv = P.rgb_to_yuv(grey)[:, 1:]
    assert uv.abs().max() < 1e-6
    bins = 10
    centres = P.chroma_bins(bins)
    assert centres.shape == (bins * bins, 2)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    cls = P.chroma_classes(P.rgb_to_yuv(red)[:, 1:], bins)
    u, v = centres[cls.item()]
    assert u < 0 and v > 0.4  # red: negative U, large V
    # every pixel's class centre is its nearest grid centre
    uv = P.rgb_to_yuv(torch.rand(2, 3, 8, 8) * 2 - 1)[:, 1:]
    cls = P.chroma_classes(uv, bins)
    nearest = torch.cdist(uv.permute(0, 2, 3, 1).reshape(-1, 2), centres).argmin(1)
    assert torch.equal(cls.flatten(), nearest)


def test_rebalancing_weights_follow_zhang_eq4():
    counts = torch.tensor([90.0, 9.0, 1.0, 0.0])
    w = P.rebalancing_weights(counts, mix=0.5)
    p = counts / counts.sum()
    assert math.isclose(float((p * w).sum()), 1.0, rel_tol=1e-6)  # E_p[w] = 1
    assert w[3] > w[2] > w[1] > w[0]  # rarer colours weigh more
    expected = 1 / (0.5 * p + 0.5 / 4)
    assert torch.allclose(w, expected / (p * expected).sum())
    assert torch.allclose(P.rebalancing_weights(torch.ones(5)), torch.ones(5))


# ---- GAN losses --------------------------------------------------------------------------------------------


def test_gan_losses_and_frozen_discriminator():
    zero = torch.zeros(4, 1)
    assert math.isclose(float(discriminator_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(generator_loss(zero)), math.log(2), rel_tol=1e-6)
    assert float(discriminator_loss(torch.full((4, 1), 20.0), torch.full((4, 1), -20.0))) < 1e-6
    assert float(generator_loss(torch.full((4, 1), 20.0))) < 1e-6
    disc = torch.nn.Linear(3, 1)
    fake = torch.randn(5, 3, requires_grad=True)
    generator_loss(call_frozen(disc, fake)).backward()
    assert fake.grad is not None and disc.weight.grad is None


# ---- the DDPM U-Net as an encoder --------------------------------------------------------------------------


def test_ddpm_encoder_is_the_unet_down_path():
    from lightning_modules.ddpm_encoder import DDPMEncoder

    backbone = {"name": "unet_encoder", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                "attn_levels": [1], "norm_groups": 4}
    module = DDPMEncoder(backbone, num_classes=10, in_chans=1, image_size=16, optimizer=None)
    assert module.unet.down is module.backbone.unet.down and module.unet.temb is module.backbone.unet.temb
    x = torch.randn(2, 1, 16, 16)
    t = torch.zeros(2, dtype=torch.long)
    assert torch.allclose(module.backbone(x), module.unet.encode(x, t)[0].mean(dim=(2, 3)))
    assert module.backbone(x).shape == (2, module.backbone.num_features)
    with pytest.raises(ConfigError, match="divisible"):
        DDPMEncoder(backbone, num_classes=10, in_chans=1, image_size=15, optimizer=None)


def test_ddpm_encoder_hand_off_through_encoder_pt(tmp_path):
    """encoder.pt of the U-Net's down path loads into `model.backbone.name=unet_encoder` of another run."""
    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.encoder_io import save_encoder
    from lightning_modules.ddpm_encoder import DDPMEncoder

    spec = {"base_channels": 8, "channel_mults": [1, 2], "attn_levels": [1], "norm_groups": 4}
    module = DDPMEncoder({"name": "unet_encoder", **spec}, num_classes=10, in_chans=1, image_size=16, optimizer=None)
    torch.nn.init.normal_(module.unet.down[0][0].conv2.weight)  # zero-initialised: make it count
    path = save_encoder(module.backbone, tmp_path / "encoder.pt", {"in_chans": 1, "image_size": 16})
    loaded = create_backbone("unet_encoder", in_chans=1, checkpoint=str(path), **spec).eval()
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(loaded(x), module.backbone.eval()(x), atol=1e-6)


# ---- smoke fits on embedded data ---------------------------------------------------------------------------

TINY = ["data.batch_size=32", "data.eval_batch_size=64", "+model.backbone.widths=[8,8,16]", "data.knn_bank_size=64",
        "model.evaluation.tsne=false", "callbacks.progress_bar=null", "logger=csv", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
SMALL_DECODER = ["model.decoder.widths=[16,8]"]


# Every model config is smoke-fitted on digits and digits_m by tests/test_runner.py; here the options it does not
# reach: the denoising autoencoder, the context encoder's adversarial term with random blocks, colour regression.
@pytest.mark.parametrize("method,extra", [
    ("autoencoder", ["data=digits", "model.noise=masking", *SMALL_DECODER]),
    ("inpainting", ["data=digits", "model.adversarial_weight=0.001", "model.mask=random",
                    "model.adversarial_backbone.widths=[4,4,8]", *SMALL_DECODER]),
    ("colorization", ["data=digits_m", "model.loss=regression", *SMALL_DECODER]),
])
def test_smoke_fit(method, extra, tmp_path):
    metrics, _ = train_in_process(f"model={method}", *TINY, *extra, run_dir=tmp_path)
    assert {"test/knn_acc", "test/linear_acc", "train/loss"} <= set(metrics)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/knn_acc"] <= 1.0
    assert (tmp_path / "encoder.pt").is_file()


def test_colorization_refuses_grey_data_and_jigsaw_small_images(tmp_path):
    with pytest.raises(ConfigError, match="colour images"):
        train_in_process("model=colorization", "data=digits", *TINY, run_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="minimum size is 21 px"):
        train_in_process("model=jigsaw", "data=digits", "data.image_size=16", *TINY, run_dir=tmp_path / "j")


def test_dcgan_on_two_processes(tmp_path):
    """Two optimizers, manual optimisation and BatchNorm under DDP (gloo): the run completes and its
    discriminator trunk is handed on."""
    run_cli("model=gan_ssl", "trainer=ddp_cpu", "data=digits", "data.image_size=16", "model.generator.widths=[8,8]",
            *[o for o in TINY if "widths" not in o], "+model.backbone.widths=[4,4,8]", run_dir=tmp_path, timeout=600)
    res = read_results(tmp_path)
    assert res["status"] == "completed" and math.isfinite(res["metrics"]["train/loss"])
    assert (tmp_path / "encoder.pt").is_file()


def test_running_stats_frozen_keeps_batchnorm_statistics():
    from lightning_modules.components.modes import running_stats_frozen

    bn = torch.nn.BatchNorm2d(3)
    before = bn.running_mean.clone()
    with running_stats_frozen(bn):
        out = bn(torch.randn(8, 3, 4, 4) + 5)
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.1
    assert abs(float(out.mean())) < 1e-5  # still normalised with the batch's statistics
    bn(torch.randn(8, 3, 4, 4) + 5)
    assert bn.running_mean.mean() > 0.4
