"""Domain-adaptation building blocks as pure functions (each with a unit test).

- `grad_reverse(x, lambd)`: the gradient-reversal layer of DANN (Ganin et al. 2016, Sec. 4):
  identity forward, gradient multiplied by `-lambd` backward (Eq. 12-13).
- `mk_mmd2(x, y)`: squared multi-kernel maximum mean discrepancy of DAN (Long et al. 2015,
  Eq. 2-3), a sum of Gaussian kernels with bandwidths around the mean pairwise distance.
- `mk_mmd2_linear(x, y)`: the linear-time unbiased estimate of the same MK-MMD^2 (Gretton et al.
  2012, Lemma 14; DAN, Eq. 6), the one DAN trains with.
- `coral_loss(x, y)`: Deep CORAL (Sun & Saenko 2016, Eq. 1): ||C_S - C_T||_F^2 / (4 d^2).
"""
from __future__ import annotations

import torch
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """R_lambda(x) = x forward; dR/dx = -lambda I backward (DANN, Eq. 12-13)."""
    return _GradReverse.apply(x, float(lambd))


def gaussian_kernels(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
                     bandwidth: float | None = None) -> torch.Tensor:
    """Mean of `kernel_num` Gaussian kernels on the stacked samples [x; y] (a (n+m) x (n+m) matrix).

    The bandwidths are bandwidth * kernel_mul**k for k centred on 0; by default `bandwidth` is the
    mean pairwise squared distance of the batch (DAN's multi-kernel family, Long et al. 2015, Eq. 3).
    """
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)
    n = len(z)
    if bandwidth is None:
        bandwidth = (d2.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    return kernel_family(d2, bandwidth, kernel_mul, kernel_num)


def kernel_family(d2: torch.Tensor, bandwidth, kernel_mul: float, kernel_num: int) -> torch.Tensor:
    """DAN's multi-kernel k = 1/K sum_k exp(-d2 / (bandwidth * kernel_mul**k)), k centred on 0 (Eq. 3)."""
    base = bandwidth / kernel_mul ** (kernel_num // 2)
    # equal weights beta_k = 1 / kernel_num (a convex combination, Eq. 3), so every k(x, x) = 1
    return sum(torch.exp(-d2 / (base * kernel_mul**k)) for k in range(kernel_num)) / kernel_num


def mk_mmd2(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
            bandwidth: float | None = None) -> torch.Tensor:
    """Biased estimate of MK-MMD^2 (DAN, Eq. 2): E k(xs,xs') + E k(xt,xt') - 2 E k(xs,xt).

    Exactly 0 when the two samples are identical; grows as the distributions move apart.
    """
    k = gaussian_kernels(x.flatten(1), y.flatten(1), kernel_mul, kernel_num, bandwidth)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def mk_mmd2_linear(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
                   bandwidth: float | None = None) -> torch.Tensor:
    """Linear-time unbiased MK-MMD^2 (DAN, Eq. 6; Gretton et al. 2012, Lemma 14).

    Quad-tuples z_i = (xs_2i-1, xs_2i, xt_2i-1, xt_2i), i = 1..n/2, and
    MMD^2 = 2/n sum_i g(z_i), g = k(xs, xs') + k(xt, xt') - k(xs, xt') - k(xs', xt): O(n) kernel
    evaluations, expectation exactly MMD^2 (0 for two samples of one law, so it can be negative).
    By default the base bandwidth is the mean squared distance of the pairs it evaluates.
    """
    n = min(len(x), len(y)) // 2 * 2
    if n < 2:
        raise ValueError(f"the linear-time MMD needs at least 2 samples per domain, got {len(x)} and {len(y)}")
    xs, xt = x[:n].flatten(1).float(), y[:n].flatten(1).float()
    s1, s2, t1, t2 = xs[0::2], xs[1::2], xt[0::2], xt[1::2]
    d2 = torch.stack([(a - b).pow(2).sum(1) for a, b in ((s1, s2), (t1, t2), (s1, t2), (s2, t1))])
    if bandwidth is None:
        bandwidth = d2.mean().detach().clamp_min(1e-12)
    k = kernel_family(d2, bandwidth, kernel_mul, kernel_num)
    return (k[0] + k[1] - k[2] - k[3]).mean()


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased feature covariance of a (n, d) batch: (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)."""
    x = x.flatten(1).float()
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / max(len(x) - 1, 1)


def coral_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss (Sun & Saenko 2016, Eq. 1): ||C_S - C_T||_F^2 / (4 d^2)."""
    d = x.flatten(1).shape[1]
    return (covariance(x) - covariance(y)).pow(2).sum() / (4 * d * d)


def domain_classifier(in_features: int, hidden: int = 500, depth: int = 2, out: int = 1) -> nn.Sequential:
    """MLP `in -> hidden (x depth, ReLU) -> out` that tells source from target features."""
    layers, width = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out))
