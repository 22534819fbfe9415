"""NT-Xent, InfoNCE and weighted kNN against straightforward loop implementations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_modules.components.contrastive import info_nce, nt_xent
from lightning_modules.evaluation.online import knn_predict


def nt_xent_loops(z1, z2, t):
    """SimCLR Eq. 1 written pair by pair: mean over the 2N anchors of -log softmax at the positive."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(torch.exp(torch.dot(z[i], z[k]) / t) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(torch.dot(z[i], z[j]) / t) / denom)
    return total / n2


def info_nce_loops(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi, ki = F.normalize(q[i], dim=0), F.normalize(k[i], dim=0)
        pos = torch.exp(torch.dot(qi, ki) / t)
        neg = sum(torch.exp(torch.dot(qi, F.normalize(kj, dim=0)) / t) for kj in queue)
        total = total - torch.log(pos / (pos + neg))
    return total / len(q)


def test_nt_xent_matches_loop_value_and_gradient():
    torch.manual_seed(0)
    z1 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    for t in (0.5, 0.1):
        fast = nt_xent(z1, z2, t)
        g_fast = torch.autograd.grad(fast, (z1, z2))
        slow = nt_xent_loops(z1.float(), z2.float(), t)
        g_slow = torch.autograd.grad(slow, (z1, z2))
        assert torch.allclose(fast.double(), slow.double(), atol=1e-5)
        for a, b in zip(g_fast, g_slow):
            assert torch.allclose(a, b, atol=1e-5)


def test_nt_xent_is_low_for_matching_views_and_high_for_random():
    torch.manual_seed(0)
    z = torch.randn(32, 16)
    assert nt_xent(z, z, 0.1) < 0.1  # each view's pair is itself: easy positive
    assert nt_xent(z, torch.randn(32, 16), 0.1) > math.log(2 * 32 - 1) - 1.5


def test_info_nce_matches_loop_value_and_gradient():
    torch.manual_seed(1)
    q = torch.randn(5, 4, requires_grad=True)
    k = torch.randn(5, 4)
    queue = torch.randn(7, 4)
    fast = info_nce(q, k, queue, 0.2)
    slow = info_nce_loops(q, k, queue, 0.2)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(torch.autograd.grad(fast, q)[0], torch.autograd.grad(slow, q)[0], atol=1e-5)


def test_weighted_knn_matches_loop():
    torch.manual_seed(2)
    bank, labels = torch.randn(50, 8), torch.randint(0, 3, (50,))
    query = torch.randn(9, 8)
    fast = knn_predict(query, bank, labels, 3, k=5, temperature=0.1, chunk=4)
    for i in range(len(query)):
        sims = torch.stack([F.cosine_similarity(query[i], b, dim=0) for b in bank])
        top = sims.topk(5).indices
        votes = torch.zeros(3)
        for j in top:
            votes[labels[j]] += torch.exp(sims[j] / 0.1)
        assert fast[i] == votes.argmax()
