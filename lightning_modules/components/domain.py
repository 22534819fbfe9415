"""Domain-adaptation building blocks as pure functions (each with a unit test).

- `grad_reverse(x, lambd)`: the gradient-reversal layer of DANN (Ganin et al. 2016, Sec. 4):
  identity forward, gradient multiplied by `-lambd` backward (Eq. 12-13).
- `mk_mmd2(x, y)`: squared multi-kernel maximum mean discrepancy of DAN (Long et al. 2015,
  Eq. 2-3), a sum of Gaussian kernels with bandwidths around the mean pairwise distance.
- `mk_mmd2_linear(x, y)`: the linear-time unbiased estimate of the same MK-MMD^2 (Gretton et al.
  2012, Lemma 14; DAN, Eq. 6), the one DAN trains with.
- `max_power_kernel_weights(h)`: DAN's kernel weights beta that maximise the test power of the
  linear-time statistic (DAN Sec. 3.3; Gretton et al. 2012, "Optimal kernel choice", Eq. 7).
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
                     bandwidth: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """DAN's multi-kernel on the stacked samples [x; y] (a (n+m) x (n+m) matrix).

    The bandwidths are bandwidth * kernel_mul**k for k centred on 0; by default `bandwidth` is the
    mean pairwise squared distance of the batch (DAN's multi-kernel family, Long et al. 2015, Eq. 3).
    """
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)
    n = len(z)
    if bandwidth is None:
        bandwidth = (d2.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    return kernel_family(d2, bandwidth, kernel_mul, kernel_num, weights)


def kernel_family(d2: torch.Tensor, bandwidth, kernel_mul: float, kernel_num: int,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """DAN's multi-kernel k = sum_k beta_k exp(-d2 / (bandwidth * kernel_mul**k)), k centred on 0 (Eq. 3).

    `weights` = beta (non-negative, summing to 1); None = equal weights 1 / kernel_num. Either way
    every k(x, x) = 1.
    """
    kernels = kernel_stack(d2, bandwidth, kernel_mul, kernel_num)
    if weights is None:
        return kernels.mean(0)
    return torch.tensordot(weights.to(kernels), kernels, dims=1)


def kernel_stack(d2: torch.Tensor, bandwidth, kernel_mul: float, kernel_num: int) -> torch.Tensor:
    """exp(-d2 / (bandwidth * kernel_mul**k)) for k = -(kernel_num // 2) .. : a (kernel_num, *d2.shape) tensor."""
    base = bandwidth / kernel_mul ** (kernel_num // 2)
    return torch.stack([torch.exp(-d2 / (base * kernel_mul**k)) for k in range(kernel_num)])


def mk_mmd2(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
            bandwidth: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Biased estimate of MK-MMD^2 (DAN, Eq. 2): E k(xs,xs') + E k(xt,xt') - 2 E k(xs,xt).

    Exactly 0 when the two samples are identical; grows as the distributions move apart.
    """
    k = gaussian_kernels(x.flatten(1), y.flatten(1), kernel_mul, kernel_num, bandwidth, weights)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def linear_time_terms(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
                      bandwidth: float | None = None) -> torch.Tensor:
    """g_k(z_i) of the linear-time MMD^2 for every kernel k and quad-tuple i: a (kernel_num, n/2) matrix.

    Quad-tuples z_i = (xs_2i-1, xs_2i, xt_2i-1, xt_2i), i = 1..n/2, and
    g = k(xs, xs') + k(xt, xt') - k(xs, xt') - k(xs', xt) (Gretton et al. 2012, Lemma 14). By default
    the base bandwidth is the mean squared distance of the pairs it evaluates.
    """
    n = min(len(x), len(y)) // 2 * 2
    if n < 2:
        raise ValueError(f"the linear-time MMD needs at least 2 samples per domain, got {len(x)} and {len(y)}")
    xs, xt = x[:n].flatten(1).float(), y[:n].flatten(1).float()
    s1, s2, t1, t2 = xs[0::2], xs[1::2], xt[0::2], xt[1::2]
    d2 = torch.stack([(a - b).pow(2).sum(1) for a, b in ((s1, s2), (t1, t2), (s1, t2), (s2, t1))])
    if bandwidth is None:
        bandwidth = d2.mean().detach().clamp_min(1e-12)
    k = kernel_stack(d2, bandwidth, kernel_mul, kernel_num)  # (K, 4, n/2)
    return k[:, 0] + k[:, 1] - k[:, 2] - k[:, 3]


def mk_mmd2_linear(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
                   bandwidth: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Linear-time unbiased MK-MMD^2 (DAN, Eq. 6; Gretton et al. 2012, Lemma 14): the mean over the
    quad-tuples of sum_k beta_k g_k (`linear_time_terms`). O(n) kernel evaluations, expectation exactly
    MMD^2 (0 for two samples of one law, so it can be negative)."""
    g = linear_time_terms(x, y, kernel_mul, kernel_num, bandwidth)
    beta = torch.full((kernel_num,), 1.0 / kernel_num) if weights is None else weights
    return torch.tensordot(beta.to(g), g, dims=1).mean()


def max_power_kernel_weights(g: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Kernel weights beta that maximise the test power of the linear-time MK-MMD (DAN Sec. 3.3).

    `g`: (K, m) linear-time terms (`linear_time_terms`). With d = their means (the per-kernel MMD^2)
    and Q = their covariance, beta = argmin beta^T (Q + eps I) beta subject to d^T beta = 1, beta >= 0
    (Gretton et al. 2012, Eq. 7; eps = `ridge` x the mean variance keeps Q invertible), rescaled to sum
    to 1 (DAN's convex combination; the test is invariant to the scale). Solved exactly for small K by
    trying every support: on a support S the minimiser is A_S^-1 d_S / (d_S^T A_S^-1 d_S), and the best
    feasible support has the largest d_S^T A_S^-1 d_S. When no kernel sees a positive MMD^2 the weights
    are equal.
    """
    g = g.detach().double()
    k = len(g)
    if k > 12:
        raise ValueError(f"max_power_kernel_weights enumerates 2^K supports; K = {k} kernels is too many (at most 12)")
    d = g.mean(1)
    q = torch.cov(g) if g.shape[1] > 1 else torch.zeros(k, k, dtype=g.dtype)
    a = q + ridge * max(q.diagonal().mean().item(), 1e-12) * torch.eye(k, dtype=g.dtype)
    best, best_power = None, 0.0
    for mask in range(1, 2**k):
        support = [i for i in range(k) if mask >> i & 1]
        d_s = d[support]
        x = torch.linalg.solve(a[support][:, support], d_s)
        power = (d_s @ x).item()
        if power > best_power and (x >= 0).all():
            best, best_power = (support, x), power
    beta = torch.full((k,), 1.0 / k, dtype=g.dtype)
    if best is not None:
        beta = torch.zeros(k, dtype=g.dtype)
        beta[best[0]] = best[1] / best[1].sum()
    return beta.float()


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
