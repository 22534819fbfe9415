"""Gaussian diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") and DDIM sampling
(Song et al. 2021, "Denoising Diffusion Implicit Models").

Indices: the paper's t = 1..T is index t-1 = 0..T-1 here; `alpha_bar[i]` is the paper's alpha_bar_{i+1}.

`GaussianDiffusion` holds the schedule as buffers (moved with the module, never trained and never
averaged: the EMA copies only the denoising network). It knows nothing about the
network; sampling takes `eps_model(x_t, t_index) -> epsilon`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from datamodules.errors import ConfigError

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                  cosine_s: float = 8e-3) -> torch.Tensor:
    """beta_1..beta_T in float64.

    linear: Ho et al. Sec. 4, beta from 1e-4 to 0.02 (for T=1000).
    cosine: Nichol & Dhariwal 2021 eq. 17, alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
            beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped at 0.999.
    """
    if timesteps < 1:
        raise ConfigError(f"model.diffusion.timesteps={timesteps} must be >= 1")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if name == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ConfigError(f"model.diffusion.schedule={name!r} is not a beta schedule; choices: {list(SCHEDULES)}")


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (N, 1, 1, ...) to broadcast against x, in x's dtype."""
    return values[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


DDIM_SPACINGS = ("linear", "quadratic")


def ddim_timesteps(timesteps: int, steps: int, spacing: str = "linear") -> list[int]:
    """S indices tau_1 < ... < tau_S in [0, T-1], tau_1 = 0 (Song et al. 2021, Sec. 4.2 and App. D.2):
    `linear` spaces them evenly; `quadratic` as tau_i ~ c i^2, denser near t = 0 where the image's
    details form (the paper's choice for CIFAR-10)."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"DDIM steps={steps} must lie in [1, T={timesteps}]")
    if spacing not in DDIM_SPACINGS:
        raise ConfigError(f"model.sampling.spacing={spacing!r}; choices: {list(DDIM_SPACINGS)}")
    if steps == 1:
        return [timesteps - 1]
    fractions = [i / (steps - 1) for i in range(steps)]
    if spacing == "quadratic":
        fractions = [f * f for f in fractions]
    taus = {round(f * (timesteps - 1)) for f in fractions}
    # quadratic spacing rounds the first few to the same index; fill with the smallest unused ones
    fill = [t for t in range(timesteps) if t not in taus][: steps - len(taus)]
    return sorted(taus.union(fill))


class GaussianDiffusion(nn.Module):
    def __init__(self, timesteps: int = 1000, schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, clip_denoised: bool = True):
        super().__init__()
        self.timesteps = timesteps
        self.clip_denoised = clip_denoised
        betas = beta_schedule(schedule, timesteps, beta_start, beta_end)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # Eq. 7: q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        tensors = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef_x0": alpha_bar_prev.sqrt() * betas / (1 - alpha_bar),
            "posterior_mean_coef_xt": alphas.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar),
        }
        # float32 buffers (float64 arithmetic above) that follow .to(device); not persistent, since they are
        # recomputed from the config, so a checkpoint holds only the networks.
        for name, value in tensors.items():
            self.register_buffer(name, value.float(), persistent=False)

    # -- forward process ---------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        noise = torch.randn_like(x0) if noise is None else noise
        return _at(self.sqrt_alpha_bar, t, x0) * x0 + _at(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6-7: mean and variance of q(x_{t-1} | x_t, x_0)."""
        mean = _at(self.posterior_mean_coef_x0, t, xt) * x0 + _at(self.posterior_mean_coef_xt, t, xt) * xt
        return mean, _at(self.posterior_variance, t, xt).expand_as(xt)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 4 solved for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (xt - _at(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / _at(self.sqrt_alpha_bar, t, xt)

    def training_loss(self, eps_model: EpsModel, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Algorithm 1 / eq. 14: L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2, in fp32."""
        t = torch.randint(0, self.timesteps, (len(x0),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=torch.float32)
        xt = self.q_sample(x0.float(), t, noise)
        return (eps_model(xt, t).float() - noise).pow(2).mean()

    # -- reverse process ---------------------------------------------------------------------------

    def _eps(self, eps_model: EpsModel, x: torch.Tensor, i: int) -> torch.Tensor:
        t = torch.full((len(x),), i, device=x.device, dtype=torch.long)
        return eps_model(x, t).float()

    @torch.no_grad()
    def p_sample(self, eps_model: EpsModel, xt: torch.Tensor, i: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step of Algorithm 2 with sigma_t^2 = beta_t:
        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) + sigma_t z,  z = 0 at t = 1.

        With `clip_denoised` the mean is computed as the posterior mean (eq. 7) at x^_0 clipped to [-1, 1],
        which equals the line above when no clipping happens (Ho et al.'s released code does the same).
        """
        t = torch.full((len(xt),), i, device=xt.device, dtype=torch.long)
        eps = self._eps(eps_model, xt, i)
        if self.clip_denoised:
            mean, _ = self.q_posterior(self.predict_x0(xt, t, eps).clamp(-1, 1), xt, t)
        else:
            mean = (xt - _at(self.betas, t, xt) / _at(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / _at(self.alphas, t, xt).sqrt()
        if i == 0:
            return mean
        z = torch.randn_like(xt) if noise is None else noise
        return mean + _at(self.betas, t, xt).sqrt() * z

    @torch.no_grad()
    def sample(self, eps_model: EpsModel, x_T: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Algorithm 2: x_T ~ N(0, I), then T ancestral steps down to x_0."""
        x = x_T.float()
        for i in reversed(range(self.timesteps)):
            z = torch.randn(x.shape, device=x.device, generator=generator) if i > 0 else None
            x = self.p_sample(eps_model, x, i, z)
        return x

    @torch.no_grad()
    def ddim_sample(self, eps_model: EpsModel, x_T: torch.Tensor, steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, spacing: str = "linear") -> torch.Tensor:
        """DDIM (Song et al. eq. 12) on the sub-sequence tau of S steps; eta=0 is deterministic,
        eta=1 is DDPM-like ancestral sampling on the sub-sequence (eq. 16 for sigma)."""
        x = x_T.float()
        taus = ddim_timesteps(self.timesteps, steps, spacing)
        for k in reversed(range(len(taus))):
            i = taus[k]
            t = torch.full((len(x),), i, device=x.device, dtype=torch.long)
            ab = _at(self.alpha_bar, t, x)
            ab_prev = _at(self.alpha_bar, torch.full_like(t, taus[k - 1]), x) if k > 0 else torch.ones_like(ab)
            eps = self._eps(eps_model, x, i)
            x0 = self.predict_x0(x, t, eps)
            if self.clip_denoised:
                x0 = x0.clamp(-1, 1)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the epsilon consistent with the clipped x_0
            sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and k > 0:
                x = x + sigma * torch.randn(x.shape, device=x.device, generator=generator)
        return x
