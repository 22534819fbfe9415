"""DDPM method: FID pieces, EMA, a small learning check, and the runner end to end (bf16, sampling only)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lightning_modules.components.diffusion import GaussianDiffusion
from lightning_modules.components.unet import UNet
from lightning_modules.evaluation.fid import cached_classifier, class_histogram, frechet_distance, quantize

from conftest import read_results

TINY = [
    "model=ddpm", "data=digits", "debug=smoke", "callbacks=none", "model.input.image_size=8",
    "model.unet.base_channels=8", "model.unet.channel_mults=[1,2]", "model.unet.attn_levels=[1]",
    "model.diffusion.timesteps=20", "model.evaluation.num_samples=40", "model.evaluation.compare_samples=20",
    "model.evaluation.classifier.epochs=1", "model.sampling.ddim_steps=5", "model.grid.num_images=4",
    "model.grid.every_n_epochs=1", "data.batch_size=32",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny nets; no thread spin-waits on a busy machine


def test_frechet_distance_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 0.0], [1.0, 1.0], size=(40_000, 2))
    b = rng.normal([1.0, 0.0], [2.0, 1.0], size=(40_000, 2))
    # ||mu_a - mu_b||^2 + sum_i (s_a + s_b - 2 sqrt(s_a s_b)) for diagonal covariances: 1 + (1 + 4 - 4) + 0 = 2
    assert frechet_distance(a, b) == pytest.approx(2.0, abs=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_quantize_and_class_histogram():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 2.0])
    q = quantize(x)
    assert q.min() == -1 and q.max() == 1 and torch.allclose((q + 1) * 127.5, ((q + 1) * 127.5).round())
    logits = torch.eye(3)[[0, 0, 2, 2]]
    assert class_histogram(logits, 3).tolist() == [0.5, 0.0, 0.5]


def test_feature_classifier_is_cached_by_dataset(tmp_path):
    from datamodules.registry import load_dataset

    splits = load_dataset({"name": "digits"}, image_size=8, channels=1)
    train, test = splits.train.subset(range(300)), splits.test
    key = {"dataset": {"name": "digits"}, "shape": [1, 8, 8]}
    options = dict(epochs=1, batch_size=64)
    model, meta = cached_classifier(tmp_path, key, train, test, 1, 10, **options)
    again, meta2 = cached_classifier(tmp_path, key, train, test, 1, 10, **options)
    assert not meta["cached"] and meta2["cached"] and meta2["test_acc"] == meta["test_acc"]
    x = torch.stack([test[i][0] for i in range(16)])
    np.testing.assert_allclose(model.embed(x)[0], again.embed(x)[0], rtol=1e-5, atol=1e-6)
    _, other = cached_classifier(tmp_path, {**key, "dataset": {"name": "digits_m"}}, train, test, 1, 10, **options)
    assert other["file"] != meta["file"] and len(list(tmp_path.glob("*.pt"))) == 2


def test_l_simple_learns_a_two_point_dataset():
    """Algorithm 1 on two 8x8 images: the loss of a tiny U-Net drops well below its initial value (~1)."""
    torch.manual_seed(0)
    d = GaussianDiffusion(timesteps=100)
    net = UNet(1, 8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), norm_groups=4, dropout=0.0)
    data = torch.zeros(2, 1, 8, 8)
    data[0, :, :, :4], data[1, :, :4] = 1, 1
    data = data * 2 - 1
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    evaluate = lambda: d.training_loss(net, data.repeat(64, 1, 1, 1), generator=torch.Generator().manual_seed(0)).item()
    before = evaluate()
    for _ in range(150):
        loss = d.training_loss(net, data.repeat(16, 1, 1, 1), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.4 * before


def test_ema_holds_the_network_only():
    from lightning_modules.ddpm import DDPM

    module = DDPM(unet={"base_channels": 8, "channel_mults": [1, 2], "attn_levels": [1], "norm_groups": 4},
                  in_chans=1, image_size=8, num_classes=10, optimizer=lambda params: torch.optim.Adam(params))
    names = set(module.ema.state_dict())
    assert names == set(module.unet.state_dict()) and not any("beta" in n or "alpha" in n for n in names)
    assert all(not p.requires_grad for p in module.ema.parameters())
    assert len(module.parameter_groups()) == len(list(module.unet.parameters()))


def test_run_bf16_then_sample_only(cli, tmp_path):
    run, cache = tmp_path / "train", tmp_path / "cache"
    cli(*TINY, "amp=bf16", "trainer.max_epochs=2", "model.evaluation.samplers=[ddim,ancestral]",
        f"model.evaluation.cache_dir={cache}", run_dir=run, env=ONE_THREAD)
    res = read_results(run)
    m = res["metrics"]
    assert res["status"] == "completed"
    for key in ("train/loss", "val/loss", "test/fid", "test/fid_ddim", "test/fid_ancestral", "test/fid_noise", "test/fid_real"):
        assert np.isfinite(m[key]), key
    assert m["train/loss"] < 2.0
    report = json.loads((run / "fid.json").read_text())
    assert sum(report["samplers"]["ddim"]["class_fractions"]) == pytest.approx(1.0, abs=1e-3)
    assert report["samplers"]["ddim"]["num_samples"] == 40 and report["samplers"]["ancestral"]["num_samples"] == 20
    assert (run / "samples" / "epoch_001.png").is_file() and (run / "samples" / "epoch_002.png").is_file()
    assert (run / "samples" / "test_ancestral.png").is_file() and (run / "fid.json").is_file()
    ckpt = tmp_path / "ddpm.ckpt"  # Lightning's default name has "=" in it, which Hydra overrides would need quoted
    shutil.copyfile(next(run.rglob("*.ckpt")), ckpt)

    out = tmp_path / "sample"
    cli(*TINY, "train=false", f"ckpt_path={ckpt}", "model.sample_only=true", "model.num_samples=12",
        "model.sampling.method=ancestral", run_dir=out, env=ONE_THREAD)
    with np.load(out / "samples" / "samples.npz") as z:
        images = z["images"]
    assert images.shape == (12, 1, 8, 8) and images.dtype == np.uint8
    assert (out / "samples" / "grid.png").is_file() and not (out / "fid.json").exists()

    bad = cli(*TINY, "model.sample_only=true", run_dir=tmp_path / "bad", check=False, env=ONE_THREAD)
    assert bad.returncode != 0 and "train=false" in bad.stderr + bad.stdout
