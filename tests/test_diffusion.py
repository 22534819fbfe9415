"""Numeric tests of the Gaussian diffusion (Ho et al. 2020) and DDIM, and shape tests of the U-Net."""
from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.components.diffusion import GaussianDiffusion, beta_schedule, ddim_timesteps
from lightning_modules.components.unet import UNet, timestep_embedding


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alpha_bar_is_the_cumulative_product(schedule):
    d = GaussianDiffusion(timesteps=1000, schedule=schedule)
    expected = torch.ones(())
    for i in [0, 1, 10, 500, 999]:
        expected = torch.prod(1 - beta_schedule(schedule, 1000)[: i + 1])
        assert d.alpha_bar[i].double().item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-9)
    assert torch.all(d.alpha_bar[1:] < d.alpha_bar[:-1])
    assert d.alpha_bar_prev[0] == 1 and torch.equal(d.alpha_bar_prev[1:], d.alpha_bar[:-1])


def test_schedules():
    linear = beta_schedule("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    cosine = beta_schedule("cosine", 1000)
    assert cosine.max() <= 0.999 and cosine.min() > 0
    # Nichol & Dhariwal: alpha_bar(t) = f(t)/f(0) with f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
    f = lambda t: torch.cos(torch.tensor(((t / 1000 + 0.008) / 1.008) * torch.pi / 2, dtype=torch.float64)) ** 2
    assert torch.prod(1 - cosine[:500]).item() == pytest.approx((f(500) / f(0)).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="choices"):
        beta_schedule("quadratic", 10)


def test_q_sample_has_the_closed_form_mean_and_variance():
    torch.manual_seed(0)
    d = GaussianDiffusion(timesteps=1000)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0])
    for i in (0, 100, 700):
        t = torch.full((200_000,), i)
        xt = d.q_sample(x0.expand(200_000, 4), t)
        ab = d.alpha_bar[i]
        torch.testing.assert_close(xt.mean(0), ab.sqrt() * x0, atol=0.01, rtol=0)
        torch.testing.assert_close(xt.var(0), (1 - ab).expand(4), atol=0.01 * max(1 - ab.item(), 0.01), rtol=0.02)


def test_posterior_matches_the_paper_and_gaussian_conditioning():
    d = GaussianDiffusion(timesteps=1000, schedule="linear")
    betas = beta_schedule("linear", 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0 = torch.tensor([[0.7, -0.2]]).double()
    xt = torch.tensor([[0.1, 1.3]]).double()
    for i in (1, 50, 999):
        mean, var = d.q_posterior(x0.float(), xt.float(), torch.tensor([i]))
        ab, ab_prev, beta = alpha_bar[i], alpha_bar[i - 1], betas[i]
        # Eq. 7: mu~_t = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t
        paper_mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * xt
        paper_var = (1 - ab_prev) / (1 - ab) * beta
        torch.testing.assert_close(mean.double(), paper_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.double(), paper_var.expand(1, 2), rtol=1e-5, atol=1e-9)
        # Independently: x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}), x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) n;
        # conditioning the joint Gaussian on x_t gives the same mean and variance.
        v_prev, cov = 1 - ab_prev, (1 - beta).sqrt() * (1 - ab_prev)
        v_t = (1 - beta) * v_prev + beta
        cond_mean = ab_prev.sqrt() * x0 + cov / v_t * (xt - ab.sqrt() * x0)
        torch.testing.assert_close(mean.double(), cond_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.double(), (v_prev - cov**2 / v_t).expand(1, 2), rtol=1e-4, atol=1e-9)


def oracle(d: GaussianDiffusion, x0: torch.Tensor):
    """The perfect epsilon-predictor for a data distribution that is the single point x0 (eq. 4 inverted)."""
    def eps(xt, t):
        ab = d.alpha_bar[t].view(-1, 1, 1, 1)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
    return eps


@pytest.mark.parametrize("clip", [False, True])
def test_algorithm2_with_a_perfect_oracle_recovers_x0(clip):
    torch.manual_seed(0)
    d = GaussianDiffusion(timesteps=1000, clip_denoised=clip)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    x_T = torch.randn(3, 1, 4, 4)
    out = d.sample(oracle(d, x0), x_T)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=0)
    # DDIM (eta = 0) with 50 steps recovers it too.
    torch.testing.assert_close(d.ddim_sample(oracle(d, x0), x_T, steps=50), x0.expand_as(out), atol=1e-4, rtol=0)


def test_algorithm2_step_is_the_posterior_at_predicted_x0():
    torch.manual_seed(0)
    d = GaussianDiffusion(timesteps=100, clip_denoised=False)
    xt, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for i in (0, 5, 99):
        t = torch.full((2,), i)
        step = d.p_sample(lambda x, tt: eps, xt, i, noise=torch.zeros_like(xt))
        mean, _ = d.q_posterior(d.predict_x0(xt, t, eps), xt, t)
        torch.testing.assert_close(step, mean, atol=1e-5, rtol=1e-5)
    z = torch.randn_like(xt)
    # sigma_t^2 = beta_t
    diff = d.p_sample(lambda x, tt: eps, xt, 50, noise=z) - d.p_sample(lambda x, tt: eps, xt, 50, noise=torch.zeros_like(z))
    torch.testing.assert_close(diff, d.betas[50].sqrt() * z)


def test_ddim_timesteps():
    taus = ddim_timesteps(1000, 50)
    assert len(taus) == 50 and taus[0] == 0 and taus[-1] == 999 and taus == sorted(set(taus))
    assert ddim_timesteps(10, 10) == list(range(10))
    with pytest.raises(ConfigError):
        ddim_timesteps(10, 11)


def test_training_loss_is_zero_for_the_oracle_and_fp32():
    d = GaussianDiffusion(timesteps=50)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    assert d.training_loss(oracle(d, x0), x0.expand(8, -1, -1, -1)).item() < 1e-8
    bf16_model = lambda x, t: torch.zeros_like(x, dtype=torch.bfloat16)
    loss = d.training_loss(bf16_model, x0.expand(8, -1, -1, -1))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("chans,size,mults", [(1, 16, (1, 2, 2)), (3, 12, (1, 2)), (1, 28, (1, 2, 2))])
def test_unet_shapes(chans, size, mults):
    net = UNet(chans, size, base_channels=8, channel_mults=mults, num_res_blocks=1, attn_levels=(len(mults) - 1,),
               norm_groups=4)
    x = torch.randn(2, chans, size, size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    # the last conv starts at zero (the ResBlocks start as identities); any training step makes it depend on t
    assert torch.count_nonzero(out) == 0


def test_unet_depends_on_time_and_rejects_bad_sizes():
    torch.manual_seed(0)
    net = UNet(1, 8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), norm_groups=4)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([3])), net(x, torch.tensor([700])))
    emb = timestep_embedding(torch.tensor([0, 1]), 8)
    assert emb.shape == (2, 8) and torch.allclose(emb[0, 4:], torch.ones(4))
    with pytest.raises(ConfigError, match="divisible"):
        UNet(1, 30, channel_mults=(1, 2, 2))
    with pytest.raises(ConfigError, match="attn_levels"):
        UNet(1, 16, channel_mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ConfigError, match="in_chans"):
        UNet(2, 16)


def test_ddim_quadratic_spacing_is_denser_near_zero():
    taus = ddim_timesteps(1000, 50, "quadratic")
    assert len(taus) == 50 and taus[0] == 0 and taus[-1] == 999 and taus == sorted(set(taus))
    assert taus[1] - taus[0] < 5 and taus[-1] - taus[-2] > 30  # fine steps at small t, coarse at large t
    with pytest.raises(ConfigError, match="spacing"):
        ddim_timesteps(1000, 50, "cubic")
