"""Deep Adaptive Image Clustering (Chang et al. 2017, ICCV; "DAC" in the paper, DAIC in the course notes).

Clustering as binary classification of pairs: is x_j in the same cluster as x_i?

    l_i = normalise(softmax(g(f(x_i))))            label features: k >= 0 entries, ||l_i|| = 1 (Sec. 3.1)
    r_ij = 1 if l_i . l_j >= u(lambda), 0 if < l(lambda), unused otherwise      (Sec. 3.2, eq. 6)
    min_w  sum_ij v_ij BCE(r_ij, l_i . l_j)        (eq. 7, w fixed lambda)
    lambda grows so that u(lambda) - l(lambda) shrinks and more pairs are selected   (eq. 8-9)
    cluster of x_i = argmax_h l_ih                 (Sec. 3.4)

The two steps alternate every training step: the pairs are selected with the current network
(no gradient through the selection), then the network takes a gradient step on them; lambda follows
the run's progress (`components.pairwise_clustering.lambda_at`) and reaches u = l at the end.

Under DDP the label features of all processes are gathered (with gradients), so each image is paired
with the whole global batch, as in one process with the global batch.
"""
from __future__ import annotations

import torch
from torch import nn

from datamodules.errors import ConfigError

from .base import BaseMethod
from .components.backbones import create_backbone
from .components.cluster_metrics import cluster_scores
from .components.distributed import gather_rows, gather_with_grad
from .components.pairwise_clustering import daic_loss, label_features, lambda_at, thresholds
from .evaluation.clusters import log_cluster_pictures


class DAIC(BaseMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", num_clusters: int | None = None, grid_per_cluster: int = 10):
        super().__init__(optimizer, scheduler, scheduler_interval)
        if num_clusters is not None and num_clusters < 2:
            raise ConfigError(f"model.num_clusters={num_clusters} must be >= 2 (null = the number of classes)")
        self.save_hyperparameters(logger=False)
        self.num_clusters = num_clusters or num_classes
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        # the last layer has k units, one per cluster (Sec. 3.1); BatchNorm as in the reference network
        self.head = nn.Sequential(nn.Linear(self.backbone.num_features, self.num_clusters),
                                  nn.BatchNorm1d(self.num_clusters))
        self.grid_per_cluster = grid_per_cluster
        self._predictions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Label features l (N, k)."""
        return label_features(self.head(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        x, _ = batch  # the labels are not read
        lam = lambda_at(self.progress)
        upper, lower = thresholds(lam)
        features = self(x)
        loss, pairs = daic_loss(features, upper, lower, others=gather_with_grad(features))
        self.log_train({"train/loss": self.check_finite(loss), "train/lambda": lam, "train/upper": upper,
                        "train/lower": lower, "train/positive_pairs": pairs["positive_pairs"],
                        "train/negative_pairs": pairs["negative_pairs"]}, len(x))
        return loss

    # ---- evaluation: the cluster of each image is its largest label feature ------------------------
    def _eval_step(self, batch):
        x, y = batch
        features = self(x)
        confidence, cluster = features.max(1)
        self._predictions.append((cluster, confidence, y))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def _epoch_end(self, stage: str) -> None:
        if not self._predictions:
            return
        cluster, confidence, y = (gather_rows(torch.cat(parts)) for parts in zip(*self._predictions))
        self._predictions = []
        if self.trainer.sanity_checking:
            return
        scores = cluster_scores(y, cluster)
        scores["clusters_used"] = float(len(torch.unique(cluster)))
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, sync_dist=True)
        if stage == "test" and self.trainer.is_global_zero:
            log_cluster_pictures(self, cluster, self.num_clusters, confidence, self.grid_per_cluster)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
