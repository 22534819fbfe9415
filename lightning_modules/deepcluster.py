"""DeepCluster (Caron et al. 2018): alternate k-means on the network's features and training the
network to predict the cluster ids.

Every epoch (Sec. 3.2-3.3):
1. extract features f(x) of the whole training set with the clean transform (no augmentation);
2. PCA to `pca_dim` dimensions with whitening, then L2-normalise;
3. k-means (k-means++ seeding) into `num_clusters` clusters; empty clusters are split
   (Sec. 3.3, "Empty clusters"); under DDP the features of all processes are clustered once on
   rank 0 and the assignments broadcast (`components.kmeans.distributed_kmeans`);
4. train f and a *freshly initialised* classifier head g to predict the cluster ids y*
       min_{theta, W} 1/N sum_n CE(g_W(f_theta(x_n)), y*_n)               (eq. 1 with y* from eq. 2)
   on augmented images drawn uniformly over the clusters (Sec. 3.3, "Trivial parametrization").
Optional Sobel filtering of the input (Sec. 4: "a fixed linear transformation based on Sobel filters").

Evaluation: `{stage}/cluster_acc` (Hungarian), `{stage}/nmi` and `{stage}/ari` of k-means with k = number of classes on the L2-normalised
features (optionally PCA-reduced / whitened first: `eval_pca_dim`, `eval_whiten`) of the scored split against its true labels; `train/nmi_prev_epoch`, the NMI
between consecutive epochs' assignments (Fig. 2b); cluster sizes (`cluster_sizes.png` in the run dir);
and the shared online linear probe / kNN (`evaluation/online.py`), which alone reads labels.
The assignments and centroids are saved in checkpoints, so a resumed run continues with them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from datamodules.errors import ConfigError

from .components.cluster_metrics import cluster_scores
from .components.distributed import gather_rows
from .components.kmeans import distributed_kmeans
from .components.modes import eval_mode
from .components.pca import preprocess_features
from .evaluation.clusters import cluster_sizes_figure
from .ssl_base import SSLMethod

CHECKPOINT_KEY = "deepcluster"


class Sobel(nn.Module):
    """Grey-scale conversion followed by the horizontal and vertical Sobel filters (2 channels)."""

    def __init__(self, in_chans: int):
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("gray", torch.full((1, in_chans, 1, 1), 1.0 / in_chans), persistent=False)
        self.register_buffer("kernels", torch.stack([gx, gx.T])[:, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = F.conv2d(x, self.gray.to(x.dtype))
        return F.conv2d(gray, self.kernels.to(x.dtype), padding=1)


@torch.no_grad()
def clustering_scores(features: torch.Tensor, labels: torch.Tensor, num_clusters: int, pca_dim: int | None,
                      whiten: bool = True, seed: int = 0, n_init: int = 3) -> dict[str, float]:
    """k-means of the preprocessed features into `num_clusters`, scored against the true labels."""
    """Under DDP, pass the features of all processes (`gather_rows`): rank 0 clusters them."""
    x = preprocess_features(features, pca_dim, whiten)
    assignments = distributed_kmeans(x, num_clusters, gathered=True, seed=seed, n_init=n_init).assignments
    return cluster_scores(labels, assignments)


def save_cluster_sizes(sizes: np.ndarray, path: Path, epoch: int) -> None:
    fig = cluster_sizes_figure(sizes, f"DeepCluster cluster sizes before epoch {epoch} (k={len(sizes)})")
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)


class DeepCluster(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", num_clusters: int = 100, pca_dim: int = 256, whiten: bool = True,
                 kmeans_iters: int = 20, kmeans_backend: str = "auto", sobel: bool = False,
                 eval_pca_dim: int | None = None, eval_whiten: bool = False, evaluation: dict | None = None,
                 train_encoder: bool = True, lr_scaling: str = "none", base_batch_size: int = 256):
        if num_clusters < 2:
            raise ConfigError(f"model.num_clusters={num_clusters} must be >= 2")
        if pca_dim is not None and pca_dim < 1:
            raise ConfigError(f"model.pca_dim={pca_dim} must be >= 1 (or null for no PCA)")
        self.sobel_input = sobel
        super().__init__(backbone, num_classes, 2 if sobel else in_chans, optimizer, scheduler, scheduler_interval,
                         evaluation, train_encoder, lr_scaling, base_batch_size)
        self.save_hyperparameters(logger=False)
        self.sobel = Sobel(in_chans) if sobel else nn.Identity()
        self.head = nn.Linear(self.backbone.num_features, num_clusters)
        self.num_clusters, self.num_classes = num_clusters, num_classes
        self.pca_dim, self.whiten = pca_dim, whiten
        self.eval_pca_dim, self.eval_whiten = eval_pca_dim, eval_whiten
        self.kmeans_options = dict(n_iter=kmeans_iters, backend=kmeans_backend)
        self.assignments: torch.Tensor | None = None  # (N,) cluster of every training image
        self.centroids: torch.Tensor | None = None
        self.previous_assignments: torch.Tensor | None = None
        self.clusterings = 0
        self.clusters_for_epoch = -1  # the epoch that trains on self.assignments
        self._start_epoch = 0
        self._cluster_stats: dict[str, float] = {}
        self._eval_features: list[tuple[torch.Tensor, torch.Tensor]] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.sobel(x))

    # ---- steps 1-3: cluster the training set ------------------------------------------------
    @torch.no_grad()
    def extract_train_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean features of this process's shard of the training set, with their dataset indices."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "cluster_dataloader"):
            raise ConfigError("DeepCluster needs datamodules.clustering.ClusteringDataModule (model.datamodule)")
        rank, world = self.trainer.global_rank, self.trainer.world_size
        with eval_mode(self):
            feats = [self.features(x.to(self.device)).float() for x, _ in datamodule.cluster_dataloader(rank, world)]
        n = len(datamodule.split("train"))
        return torch.cat(feats), torch.arange(rank, n, world, device=self.device)

    @torch.no_grad()
    def recluster(self, for_epoch: int) -> None:
        features, index = self.extract_train_features()
        features = preprocess_features(gather_rows(features), self.pca_dim, self.whiten)  # step 2
        index = gather_rows(index)
        result = distributed_kmeans(features, self.num_clusters, gathered=True, seed=self.clusterings,
                                    **self.kmeans_options)  # step 3
        assignments = torch.empty_like(result.assignments)
        assignments[index] = result.assignments  # back to dataset order
        self.clusters_for_epoch = for_epoch
        self.set_clusters(assignments, result.centroids)
        self.clusterings += 1
        self.reset_head()

    def set_clusters(self, assignments: torch.Tensor, centroids: torch.Tensor) -> None:
        self.previous_assignments, self.assignments = self.assignments, assignments.to(self.device)
        self.centroids = centroids.to(self.device)
        self.trainer.datamodule.set_assignments(self.assignments.cpu().numpy())
        sizes = torch.bincount(self.assignments, minlength=self.num_clusters).cpu().numpy()
        # logged when the epoch that trains on these clusters starts (Lightning forbids logging in on_fit_start)
        self._cluster_stats = {"train/empty_clusters": float((sizes == 0).sum()),
                               "train/largest_cluster": float(sizes.max()), "train/smallest_cluster": float(sizes.min())}
        if self.previous_assignments is not None:
            nmi = normalized_mutual_info_score(self.previous_assignments.cpu().numpy(), self.assignments.cpu().numpy())
            self._cluster_stats["train/nmi_prev_epoch"] = float(nmi)  # Fig. 2(b)
        if self.trainer.is_global_zero:
            save_cluster_sizes(sizes, Path(self.trainer.default_root_dir) / "cluster_sizes.png", self.clusters_for_epoch)

    def reset_head(self) -> None:
        """A new classifier for the new clusters (and no optimizer state left from the old one)."""
        self.head.reset_parameters()
        for optimizer in self.trainer.optimizers:
            for p in self.head.parameters():
                optimizer.state.pop(p, None)

    def on_fit_start(self) -> None:
        # Epoch 0's first batch is fetched before on_train_epoch_start, so its clusters are made here.
        # A resumed run clusters again (DeepCluster reclusters every epoch); `train/nmi_prev_epoch`
        # then compares with the clusters saved in the checkpoint.
        if self.train_encoder:
            if self.assignments is not None:
                self.assignments, self.centroids = self.assignments.to(self.device), self.centroids.to(self.device)
            self.recluster(self._start_epoch)

    def on_train_epoch_start(self) -> None:
        # Recluster at the start of each later epoch, before its sampler is iterated. Not in
        # on_train_epoch_end: a progress bar syncing torchmetrics on rank 0 only would interleave
        # with the all_gather under DDP and deadlock.
        if self.train_encoder and self.clusters_for_epoch != self.current_epoch:
            self.recluster(self.current_epoch)
        if self._cluster_stats:
            self.log_dict(self._cluster_stats, sync_dist=True)  # equal on every process

    # ---- step 4: predict the cluster ids ------------------------------------------------------
    def training_step(self, batch, batch_idx):
        views, y, index = batch
        if not self.train_encoder:  # random-init baseline: only the probe trains
            with torch.no_grad():
                features = self.features(views[0])
            return self.online.training_loss(self, features, y)
        features = self.features(views[0])
        loss = F.cross_entropy(self.head(features), self.assignments[index])  # eq. 1 with y* = k-means ids
        self.log("train/loss", self.check_finite(loss), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss + self.online.training_loss(self, features, y)

    # ---- evaluation ---------------------------------------------------------------------------
    def _eval(self, stage, batch, dataloader_idx):
        x, y = batch
        features = self.features(x)
        self.online.eval_step(self, stage, features, y, dataloader_idx)
        if dataloader_idx == 0:
            self._eval_features.append((features.detach().float(), y))

    def _clustering_epoch_end(self, stage: str) -> None:
        if not self._eval_features:
            return
        features = gather_rows(torch.cat([f for f, _ in self._eval_features]))
        labels = gather_rows(torch.cat([y for _, y in self._eval_features]))
        self._eval_features = []
        scores = clustering_scores(features, labels, self.num_classes, self.eval_pca_dim, self.eval_whiten)
        # every process holds the same gathered features and rank 0's clustering (sync_dist averages equal values)
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self._clustering_epoch_end("val")

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        self._clustering_epoch_end("test")

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.assignments is not None:
            checkpoint[CHECKPOINT_KEY] = {"assignments": self.assignments.cpu(), "centroids": self.centroids.cpu(),
                                          "clusterings": self.clusterings, "for_epoch": self.clusters_for_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self.assignments, self.centroids = state["assignments"], state["centroids"]
            self.clusterings, self.clusters_for_epoch = state["clusterings"], state["for_epoch"]
            self._start_epoch = checkpoint.get("epoch", 0) + 1
