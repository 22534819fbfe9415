"""Two CPU processes over gloo: gathered NT-Xent equals one process with the whole batch (loss and
gradients), and MoCo's queue receives the keys of all processes in rank order."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.components.contrastive import nt_xent

WORLD, N, D_IN, D = 2, 4, 6, 5


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N * WORLD, D_IN, generator=g), torch.randn(N * WORLD, D_IN, generator=g)


def _layer():
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        # NT-Xent: each process holds N of the 2 x (N * WORLD) views
        x1, x2 = _inputs()
        layer = _layer()
        mine = slice(rank * N, (rank + 1) * N)
        loss = nt_xent(layer(x1[mine]), layer(x2[mine]), temperature=0.3)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
        dist.all_reduce(grads)  # what DDP does with gradients: the mean over processes
        grads /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD

        # MoCo queue: keys of both processes, rank order
        from lightning_modules.moco import MoCo

        moco = MoCo(backbone={"name": "small_cnn", "widths": (4, 4, 8)}, num_classes=10, in_chans=1,
                    optimizer=None, projector={"hidden_dim": 8, "out_dim": 3}, queue_size=10, bn="none")
        moco.queue_ptr.fill_(8)  # wraps around: 8, 9, 0, 1 for rank 0; 2, 3, 4, 5 for rank 1
        keys = torch.arange(4 * 3, dtype=torch.float32).view(4, 3) + 100 * rank
        moco.enqueue(keys)
        if rank == 0:
            torch.save({"loss": mean_loss, "grads": grads, "queue": moco.queue.clone(), "ptr": moco.queue_ptr.clone()},
                       os.path.join(out_dir, "out.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_ntxent_and_moco_queue_match_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    out = torch.load(tmp_path / "out.pt")

    x1, x2 = _inputs()
    layer = _layer()
    full = nt_xent(layer(x1), layer(x2), temperature=0.3)
    full.backward()
    grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
    assert torch.allclose(out["loss"], full.detach(), atol=1e-6)
    assert torch.allclose(out["grads"], grads, atol=1e-6)

    keys = torch.cat([torch.arange(12.0).view(4, 3) + 100 * r for r in range(WORLD)])
    keys = torch.nn.functional.normalize(keys, dim=1)
    order = [8, 9, 0, 1, 2, 3, 4, 5]
    assert torch.allclose(out["queue"][order], keys)
    assert int(out["ptr"]) == 6
