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
- `mk_mmd2(x, y, source_weights=alpha)`: WDAN's class-weighted MMD (Yan et al. 2017): the source mean
  embedding weighted by alpha_{y_i} / sum alpha; `class_prior` and `class_weights` give
  alpha_c = p_t(c) / p_s(c) from the source prior and the (estimated) target prior.
- `multilinear_map(f, g)` and `RandomizedMultilinearMap`: CDAN's conditioning T(h) of the features f on the
  predictions g (Long et al. 2018, Eq. 4 and Eq. 5); `entropy_weight(g)` = 1 + e^{-H(g)} (CDAN+E, Eq. 8);
  `conditional_domain_loss`: the domain classifier's cross-entropy weighted per example (Eq. 8-9).
- `mcc_loss(logits, T)`: minimum class confusion (Jin et al. 2020, Eq. 1-6).
- `entropy(p)`: Shannon entropy of each row of a probability matrix.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distributed import dist_ready, gather_with_grad, world


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
            bandwidth: float | None = None, weights: torch.Tensor | None = None,
            source_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Biased estimate of MK-MMD^2 (DAN, Eq. 2): E k(xs,xs') + E k(xt,xt') - 2 E k(xs,xt).

    Exactly 0 when the two samples are identical; grows as the distributions move apart.
    `source_weights` (one non-negative weight per source row, WDAN's alpha_{y_i}): the source mean
    embedding becomes sum_i a_i phi(xs_i) with a = alpha / sum alpha, so
    ||sum_i a_i phi(xs_i) - 1/N sum_j phi(xt_j)||^2 = a^T K_ss a + mean K_tt - 2 a^T K_st 1/N (Yan et al. 2017).
    """
    k = gaussian_kernels(x.flatten(1), y.flatten(1), kernel_mul, kernel_num, bandwidth, weights)
    n = len(x)
    if source_weights is None:
        return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    a = source_weights.to(k).flatten()
    a = a / a.sum().clamp_min(1e-12)
    return a @ k[:n, :n] @ a + k[n:, n:].mean() - 2 * (a @ k[:n, n:]).mean()


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


# ------------------------------------------------------------------------------------------------
# WDAN: class priors and weights (Yan et al., CVPR 2017)


def class_prior(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """p(c) = (count of c + smoothing) / (N + C smoothing): the class prior of a label vector."""
    counts = torch.bincount(labels.flatten().long(), minlength=num_classes).double() + smoothing
    return (counts / counts.sum().clamp_min(1e-12)).float()


def class_weights(source_prior: torch.Tensor, target_prior: torch.Tensor) -> torch.Tensor:
    """WDAN's alpha_c = p_t(c) / p_s(c): source examples of a class rarer in the target count less in the
    weighted MMD. A class absent from the source gets weight 0 (no source example carries it)."""
    return torch.where(source_prior > 0, target_prior / source_prior.clamp_min(1e-12), torch.zeros_like(source_prior))


# ------------------------------------------------------------------------------------------------
# CDAN: conditional adversarial domain adaptation (Long et al., NeurIPS 2018)


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """H(p_i) = -sum_c p_ic log p_ic for each row of a probability matrix."""
    return -(p * torch.log(p.clamp_min(eps))).sum(1)


def entropy_weight(p: torch.Tensor) -> torch.Tensor:
    """CDAN+E's w(H(g)) = 1 + e^{-H(g)} (Eq. 8): certain predictions weigh up to 2, uniform ones 1 + 1/C."""
    return 1.0 + torch.exp(-entropy(p))


def multilinear_map(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """T_tensor(f, g) = f (x) g (Eq. 4): each row's outer product g_i f_i^T, flattened to C x d_f values."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """T_odot(f, g) = (R_f f) odot (R_g g) / sqrt(d) (Eq. 5): a d-dimensional approximation of f (x) g whose
    inner products are unbiased estimates of the outer products' (Theorem 1). R_f, R_g are drawn once
    from N(0, 1) and kept fixed (buffers: saved in checkpoints, identical on every DDP process)."""

    def __init__(self, features: int, classes: int, dim: int = 1024):
        super().__init__()
        self.dim = dim
        self.register_buffer("r_f", torch.randn(features, dim))
        self.register_buffer("r_g", torch.randn(classes, dim))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (f @ self.r_f) * (g @ self.r_g) / math.sqrt(self.dim)


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """sum of `x` over every DDP process (no gradient); `x` itself in one process."""
    if not dist_ready():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def conditional_domain_loss(d_logits: torch.Tensor, is_target: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """The domain classifier's loss of CDAN (Eq. 6), or CDAN+E's (Eq. 8) with `weights` = w(H(g)):

        E = -sum_s w_i log D_i / sum_s w - sum_t w_j log(1 - D_j) / sum_t w, halved,

    each domain's weights normalised by their sum over the *whole* batch, as the authors' code does
    (weights 1: the mean binary cross-entropy of either domain, the plain CDAN loss for equal batches).
    Under DDP the sums run over every process, and the local loss is scaled by the world size so that
    DDP's mean of the gradients is the gradient of the global-batch loss. Weights carry no gradient.
    """
    d = is_target.to(d_logits.dtype)
    w = torch.ones_like(d) if weights is None else weights.detach().to(d_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(d_logits.float().flatten(), d.float(), reduction="none")
    w_source = _global_sum((w * (1 - d)).sum()).clamp_min(1e-12)
    w_target = _global_sum((w * d).sum()).clamp_min(1e-12)
    per_domain = (w * (1 - d) * bce).sum() / w_source + (w * d * bce).sum() / w_target
    return 0.5 * per_domain * world()[1]


# ------------------------------------------------------------------------------------------------
# MCC: minimum class confusion (Jin et al., ECCV 2020)


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5, gather: bool = True) -> torch.Tensor:
    """Minimum class confusion of a batch of target logits (Jin et al. 2020):

        Y = softmax(Z / T)                                          (Eq. 1, probability rescaling)
        W_ii = B (1 + e^{-H(Y_i.)}) / sum_i' (1 + e^{-H(Y_i'.)})      (Eq. 2-3, uncertainty reweighting)
        C_jj' = Y_.j^T W Y_.j'                                        (Eq. 4, class correlation)
        C~_jj' = C_jj' / sum_j'' C_jj''                               (Eq. 5, category normalisation)
        L_MCC = 1/|C| sum_j sum_{j' != j} |C~_jj'|                    (Eq. 6)

    The class confusion matrix is the paper's over the mini-batch B; under DDP (`gather`) B is the global
    batch, gathered with its gradient, so every process computes the same loss, and DDP's mean gradient
    equals that of one process holding the whole batch (tests/test_da_part2.py). The entropy weights
    are constants (no gradient through them), as in the authors' code.
    """
    p = F.softmax(logits.float() / temperature, dim=1)
    if gather:
        p = gather_with_grad(p)
    w = entropy_weight(p.detach())
    w = len(p) * w / w.sum()
    confusion = (p * w.unsqueeze(1)).T @ p
    confusion = confusion / confusion.sum(1, keepdim=True).clamp_min(1e-12)
    return (confusion.sum() - confusion.trace()) / p.shape[1]
