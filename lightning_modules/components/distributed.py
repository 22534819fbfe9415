"""The collectives every method uses under DDP, written once. Without an initialised process group
(one process) each is the identity.

- `gather_rows`: every process's rows in rank order, row counts may differ (evaluation features, k-means
  inputs, MoCo's keys); no gradient.
- `gather_with_grad`: the same for equal-sized batches, keeping the autograd graph (SimCLR's negatives span
  the global batch, and the gradients equal those of one process holding the whole batch: tests/test_ssl_ddp.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist_ready() else (0, 1)


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows in rank order (row counts may differ between processes)."""
    if not dist_ready():
        return x
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
    counts = [int(c) for c in counts]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over processes and keeps this
    process's slice (all_reduce, so it works on gloo as on NCCL)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` of every process along dim 0 (rank order), keeping the autograd graph."""
    if not dist_ready():
        return x
    return torch.cat(_GatherWithGrad.apply(x), 0)
