"""MoCo v2 (He et al. 2020; Chen et al. 2020, "Improved baselines"): contrast a query against its
positive key and a queue of K negative keys from earlier batches.

    q = g_q(f_q(x_q)),  k = g_k(f_k(x_k))                     (Algorithm 1)
    L = InfoNCE(q, k+, queue; tau)                             (Eq. 1)
    theta_k <- m theta_k + (1 - m) theta_q, no gradient to k   (Eq. 2)
    enqueue the keys of the batch (all processes), dequeue the oldest

The queue is a registered buffer (saved in checkpoints, so resuming restores it with the key
encoder). MoCo v2 = MLP projection head + stronger augmentation (blur) + cosine schedule.

BatchNorm shortcut (Sec. 3.3): if a query and its positive key see the same batch statistics the
model can cheat. `bn` chooses the remedy:
- `shuffle`: under DDP, shuffle-BN -- the key batch is shuffled across processes before the key
  encoder and un-shuffled after. In one process, the same idea simulated: queries are forwarded
  in `bn_splits` sub-batches and keys in `bn_splits` sub-batches of a shuffled order, so each
  BatchNorm sees a sub-batch, and a query's sub-batch differs from its key's.
- `sync`: SyncBatchNorm (DDP with `trainer.sync_batchnorm=true`): statistics over the global batch.
- `none`: plain BatchNorm over the whole local batch (the shortcut is possible; for ablations).
- `auto`: `none` when the encoder (backbone and projector) has no BatchNorm layer (e.g. LeNet: no
  batch statistics, no shortcut, so nothing to pay for); else `sync` under DDP when the trainer
  converted BN to SyncBN, `shuffle` otherwise.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError

from .components.contrastive import info_nce
from .components.distributed import gather_rows, world
from .components.ema import ema_update, frozen_copy
from .components.heads import ProjectionMLP
from .ssl_base import SSLMethod

BN_MODES = ("auto", "shuffle", "sync", "none")


class MoCo(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 projector: dict | None = None, temperature: float = 0.2, queue_size: int = 65536,
                 momentum: float = 0.999, bn: str = "auto", bn_splits: int = 8, symmetric: bool = False,
                 **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        if bn not in BN_MODES:
            raise ConfigError(f"model.bn={bn!r}; choices: {list(BN_MODES)}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"model.momentum={momentum} must lie in [0, 1)")
        self.temperature, self.momentum, self.symmetric = temperature, momentum, symmetric
        self.bn, self.bn_splits, self.bn_resolved = bn, max(1, bn_splits), None
        self.projector = ProjectionMLP(self.backbone.num_features, **(projector or {}))
        # key encoder: a copy of the query encoder that only the EMA rule moves (Eq. 2)
        self.key_backbone, self.key_projector = frozen_copy(self.backbone), frozen_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, self.projector.out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ---- BatchNorm choice ----------------------------------------------------------------------
    def resolve_bn(self) -> str:
        _, world_size = world()
        has_sync = any(isinstance(m, nn.SyncBatchNorm) for m in self.modules())
        mode = self.bn
        if mode == "auto" and not self.encoder_has_batchnorm():
            mode = "none"
        elif mode == "auto":
            mode = "sync" if world_size > 1 and has_sync else "shuffle"
        if mode == "shuffle" and world_size > 1 and has_sync:
            raise ConfigError("model.bn=shuffle needs plain BatchNorm, but trainer.sync_batchnorm=true converted "
                              "it to SyncBatchNorm; set trainer.sync_batchnorm=false, or model.bn=sync")
        if mode == "sync" and not (world_size > 1 and has_sync):
            raise ConfigError("model.bn=sync needs DDP with trainer.sync_batchnorm=true (trainer=ddp or ddp_cpu); "
                              "in one process use model.bn=shuffle (split shuffle-BN) or model.bn=none")
        self.bn_resolved = mode
        return mode

    def encoder_has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for m in (*self.backbone.modules(), *self.projector.modules()))

    def on_fit_start(self):
        mode = self.resolve_bn()
        _, world_size = world()
        batch_size = getattr(self.trainer.datamodule, "batch_size", 0)
        global_batch = batch_size * world_size
        if global_batch > len(self.queue):
            raise ConfigError(f"model.queue_size={len(self.queue)} must be >= the global batch size {global_batch}")
        self.print(f"MoCo: BatchNorm mode '{mode}' ({world_size} process(es))")

    # ---- encoders ------------------------------------------------------------------------------
    def _split(self) -> int:
        return self.bn_splits if self.bn_resolved == "shuffle" and world()[1] == 1 else 1

    def _encode_queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.backbone(c) for c in x.chunk(self._split())])
        return h, self.projector(h)

    def _key_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_projector(self.key_backbone(x))

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of this process's images, with the chosen shuffle-BN."""
        rank, world_size = world()
        if self.bn_resolved != "shuffle":
            return self._key_encoder(x)
        if world_size == 1:  # simulated shuffle-BN: shuffled order, sub-batches, un-shuffle
            perm = torch.randperm(len(x), device=x.device)
            k = torch.cat([self._key_encoder(c) for c in x[perm].chunk(self.bn_splits)])
            return k[torch.argsort(perm)]
        # shuffle-BN across processes (MoCo's _batch_shuffle_ddp / _batch_unshuffle_ddp)
        x_all = gather_rows(x)
        perm = torch.randperm(len(x_all), device=x.device)
        dist.broadcast(perm, src=0)
        k_all = gather_rows(self._key_encoder(x_all[perm.view(world_size, -1)[rank]]))
        return k_all[torch.argsort(perm).view(world_size, -1)[rank]]

    # ---- queue ---------------------------------------------------------------------------------
    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: the keys of all processes (rank order) replace the oldest entries."""
        keys = gather_rows(F.normalize(keys.detach().float(), dim=1))
        size = len(self.queue)
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_(int((self.queue_ptr + len(keys)) % size))

    # ---- the step (Algorithm 1) ----------------------------------------------------------------
    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bn_resolved is None:
            self.resolve_bn()
        x_q, x_k = views[:2]
        h_q, q = self._encode_queries(x_q)
        with torch.no_grad():
            ema_update(self.key_backbone, self.backbone, self.momentum)
            ema_update(self.key_projector, self.projector, self.momentum)
            k = self.encode_keys(x_k)
        negatives = self.queue.clone()  # enqueue below must not modify what the loss saved
        loss = info_nce(q, k, negatives, self.temperature)
        if self.symmetric:  # both views as queries (MoCo v3 style); both key sets are enqueued
            _, q2 = self._encode_queries(x_k)
            with torch.no_grad():
                k2 = self.encode_keys(x_q)
            loss = (loss + info_nce(q2, k2, negatives, self.temperature)) / 2
            k = torch.cat([k, k2])
        self.enqueue(k)
        return loss, h_q
