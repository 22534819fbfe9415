"""Pure domain-adaptation functions: gradient reversal, MK-MMD, CORAL, and the DANN schedules."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.components.domain import coral_loss, covariance, grad_reverse, mk_mmd2
from lightning_modules.components.schedules import ProgressLR, adaptation_weight, annealed_lr_factor, progress


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, 2.5])
def test_grad_reverse_is_identity_forward_and_minus_lambda_backward(lambd):
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    upstream = torch.randn(4, 3)
    y.backward(upstream)
    assert torch.allclose(x.grad, -lambd * upstream)


def test_mmd_is_zero_for_identical_samples_and_grows_with_mean_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    assert mk_mmd2(x, x.clone()).abs().item() < 1e-6
    y = torch.randn(64, 8, generator=g)
    # a fixed bandwidth so the kernels do not widen with the shift
    shifts = [mk_mmd2(x, y + s, bandwidth=16.0).item() for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:])), shifts
    assert shifts[-1] > 3 * shifts[0]  # the biased estimate is > 0 for two finite samples of one law


def test_mmd_matches_single_gaussian_kernel_by_hand():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    # one kernel exp(-d^2 / 2): k(x,x) mean, k(y,y) = 1, k(x,y) = exp(-9/2), exp(-4/2)
    expected = (2 + 2 * math.exp(-0.5)) / 4 + 1 - 2 * (math.exp(-4.5) + math.exp(-2.0)) / 2
    assert mk_mmd2(x, y, kernel_num=1, bandwidth=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_coral_matches_formula_on_a_hand_computed_case():
    # source: points (0,0), (2,0) -> C_S = [[2, 0], [0, 0]] (unbiased, n - 1 = 1)
    # target: points (0,0), (0,2) -> C_T = [[0, 0], [0, 2]]
    xs = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    xt = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(covariance(xs), torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    # ||C_S - C_T||_F^2 = 2^2 + 2^2 = 8; / (4 d^2) with d = 2 -> 0.5
    assert coral_loss(xs, xt).item() == pytest.approx(0.5)
    assert coral_loss(xs, xs).item() == 0.0


def test_coral_is_differentiable_and_matches_numpy():
    import numpy as np

    xs, xt = torch.randn(16, 5), torch.randn(20, 5) * 2
    cs, ct = np.cov(xs.numpy(), rowvar=False), np.cov(xt.numpy(), rowvar=False)
    expected = ((cs - ct) ** 2).sum() / (4 * 5 * 5)
    assert coral_loss(xs, xt).item() == pytest.approx(expected, rel=1e-4)


def test_dann_schedules_match_their_formulas():
    for p in (0.0, 0.1, 0.5, 1.0):
        assert adaptation_weight(p) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1)
        assert annealed_lr_factor(p) == pytest.approx(1 / (1 + 10 * p) ** 0.75)
    assert adaptation_weight(0.0) == 0.0 and adaptation_weight(1.0) > 0.999
    assert progress(5, 10) == 0.5 and progress(20, 10) == 1.0


def test_progress_lr_follows_mu_p_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    sched = ProgressLR(opt, total_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx(0.01 / (1 + 10 * 0.5) ** 0.75)
    assert lrs[100] == pytest.approx(0.01 / 11**0.75)
