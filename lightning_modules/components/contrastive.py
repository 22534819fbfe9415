"""Contrastive losses as pure functions, and the collectives that make them correct under DDP.

- `nt_xent` (SimCLR, Chen et al. 2020, Eq. 1): 2N views, view i's positive is its pair, the
  other 2N - 2 views are negatives. Under DDP the embeddings of all processes are gathered *with
  gradients* (`gather_with_grad`), so negatives span the global batch and the gradients equal
  those of one process holding the whole batch (tests/test_ssl_ddp.py).
- `info_nce` (MoCo, He et al. 2020, Eq. 1): one positive key per query against a queue of
  negative keys.
The collectives live in components/distributed.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy over the 2N views (SimCLR Eq. 1).

    Every process must hold the same number of images n (the training loader drops the last
    incomplete batch).

    l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t), averaged over all 2N
    anchors, with sim the cosine similarity and (i, j) the two views of one image. This process's
    2n anchors are scored against the 2N views of all processes when `gather` is on; the mean
    over local anchors, averaged over processes by DDP, is the global mean.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = len(z1)
    rank, _ = world() if gather else (0, 1)
    all1, all2 = (gather_with_grad(z1), gather_with_grad(z2)) if gather else (z1, z2)
    big_n = len(all1)
    candidates = torch.cat([all1, all2], 0)  # (2N, d): global index of view 1 of image g is g, of view 2 is N + g
    anchors = torch.cat([z1, z2], 0)  # (2n, d)
    local = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    logits = anchors @ candidates.T / temperature
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))  # the sum runs over k != i
    return F.cross_entropy(logits, pos_idx)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, Eq. 1): query q_i, positive key k_i, negatives = queue (K, d).

    -log exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.k_j/t)); q, k, queue are L2-normalised here.
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    queue = F.normalize(queue.float(), dim=1)
    positive = (q * k).sum(1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
