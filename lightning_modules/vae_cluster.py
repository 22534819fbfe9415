"""Features -> VAE -> (fuzzy) k-means: the course notes' unsupervised pipeline, as one method.

    1. features f_e(x) of every image from each encoder e, frozen and computed once: the pixels
       themselves (`pixels`), an ImageNet network (`{name: tf_efficientnet_lite0, pretrained: true}`)
       or any run's `encoder.pt` (`{checkpoint: PATH}`);
    2. one VAE per encoder, trained on that encoder's standardised features (Kingma & Welling 2014;
       `components.vae`); with several encoders this is the notes' "ensemble of VAEs";
    3. the latent means mu_e(x) of each VAE, standardised and concatenated into one representation;
    4. k-means (k-means++ seeding, restarts) or fuzzy c-means (Bezdek 1981; memberships saved and
       plotted) into `num_clusters` clusters (default: the number of classes).

Labels are read only to score: `{stage}/cluster_acc` (Hungarian matching), `{stage}/nmi`, `{stage}/ari`
of the clustering of the scored split. Artefacts of the test: `plots/clusters.png` (images per
cluster), `plots/cluster_sizes.png`, with fuzzy c-means `memberships.npz` and `plots/memberships.png`,
and with `k_range` the report for choosing k (`k_selection.json`, `plots/k_selection.png`).

Under DDP every process computes the (frozen) features of whole splits, trains on its shard of the
batches (the VAE loss is per example), and the latents of all processes are gathered and clustered
once on rank 0 (`components.kmeans.distributed_kmeans`), so every process logs the same scores.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datamodules.errors import ConfigError

from .base import BaseMethod
from .components.backbones import create_backbone
from .components.cluster_metrics import cluster_scores, k_selection
from .components.encoder_io import read_backbone_state
from .components.feature_cache import CachedSplits
from .components.fuzzy_cmeans import fuzzy_cmeans
from .components.distributed import gather_rows
from .components.kmeans import distributed_kmeans
from .components.vae import VectorVAE
from .evaluation.clusters import k_selection_figure, log_cluster_pictures, memberships_figure
from .evaluation.images import log_image

log = logging.getLogger(__name__)

CLUSTERERS = ("kmeans", "fuzzy")
PIXELS = "pixels"


class Pixels(nn.Module):
    """The identity encoder: an image as one vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def build_encoder(spec, in_chans: int) -> nn.Module:
    """`pixels`, or a backbone spec ({name, pretrained, pretrained_file, checkpoint}); frozen, eval mode."""
    if spec == PIXELS:
        return Pixels()
    if not isinstance(spec, dict) or not (spec.get("name") or spec.get("checkpoint")):
        raise ConfigError(f"model.encoders: each entry is {PIXELS!r} or a backbone "
                          f"{{name: ..., pretrained: ..., checkpoint: ...}}; got {spec!r}")
    spec = dict(spec)
    if spec.get("checkpoint") and not spec.get("name"):
        # the architecture the encoder.pt / checkpoint records (read safely, weights only)
        _, saved = read_backbone_state(spec["checkpoint"], option="model.encoders[].checkpoint")
        if not saved.get("name"):
            raise ConfigError(f"model.encoders: {spec['checkpoint']} does not name its architecture; add name: <backbone>")
        spec["name"] = saved["name"]
        spec.update({k: v for k, v in saved.items() if k not in ("name", "input", "in_chans") and k not in spec})
    encoder = create_backbone(in_chans=in_chans, **spec)
    return encoder.eval().requires_grad_(False)


class Standardise(nn.Module):
    """(x - mean) / scale with the training split's per-dimension mean and one overall scale, so each
    input dimension keeps its relative variance (constant border pixels are not blown up)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.scale.copy_((x - self.mean).pow(2).mean().sqrt().clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class VAECluster(BaseMethod):
    def __init__(self, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch",
                 encoders: list | None = None, vae: dict | None = None, clusterer: str = "kmeans",
                 num_clusters: int | None = None, fuzziness: float = 1.25, n_init: int = 5,
                 k_range: list[int] | None = None, grid_per_cluster: int = 10):
        super().__init__(optimizer, scheduler, scheduler_interval)
        if clusterer not in CLUSTERERS:
            raise ConfigError(f"model.clusterer={clusterer!r}; choices: {list(CLUSTERERS)}")
        if num_clusters is not None and num_clusters < 2:
            raise ConfigError(f"model.num_clusters={num_clusters} must be >= 2 (null = the number of classes)")
        if k_range is not None and (len(k_range) != 2 or not 2 <= k_range[0] < k_range[1]):
            raise ConfigError(f"model.k_range={k_range} must be [k_min, k_max] with 2 <= k_min < k_max (or null)")
        self.save_hyperparameters(logger=False)
        specs = list(encoders or [PIXELS])
        self.encoders = nn.ModuleList(build_encoder(spec, in_chans) for spec in specs)
        self.vae_options = dict(vae or {})
        self.beta_kl = self.vae_options.pop("beta", 1.0)  # weight of the KL term (1 = the VAE's ELBO)
        # one VAE (and its input standardisation) per encoder, sized by the encoder's output
        with torch.no_grad():
            probe = torch.zeros(1, in_chans, image_size, image_size)
            self.feature_sizes = [int(encoder(probe).shape[1]) for encoder in self.encoders]
        self.standardise = nn.ModuleList(Standardise(size) for size in self.feature_sizes)
        self.vaes = nn.ModuleList(VectorVAE(size, **self.vae_options) for size in self.feature_sizes)
        self.num_classes, self.clusterer, self.fuzziness, self.n_init = num_classes, clusterer, fuzziness, n_init
        self.num_clusters = num_clusters or num_classes
        self.k_range, self.grid_per_cluster = k_range, grid_per_cluster
        self.cached_splits = CachedSplits()  # train and val as encoder features while the VAEs train
        self._latents: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- 1. frozen features, computed once -----------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.encoders.eval()  # frozen: BatchNorm statistics and dropout stay as the weights left them
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(x).float() for encoder in self.encoders], dim=1)

    def blocks(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The concatenated features split back into one block per encoder."""
        return list(features.split(self.feature_sizes, dim=1))

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.cached_splits.swap(datamodule, ("train", "val"), self.encode, self.device)
        for block, standardise in zip(self.blocks(datamodule.split("train").features.to(self.device)),
                                      self.standardise):
            standardise.fit(block)

    def on_fit_end(self) -> None:
        self.cached_splits.restore(self.trainer.datamodule)

    def parameter_groups(self):
        return [{"params": list(self.vaes.parameters())}]

    # ---- 2. the VAEs ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        features, _ = batch  # the labels are not read
        recon = kl = 0.0
        for block, standardise, vae in zip(self.blocks(features), self.standardise, self.vaes):
            terms = vae(standardise(block))
            recon, kl = recon + terms["recon"], kl + terms["kl"]
        loss = recon + self.beta_kl * kl  # the negative ELBO when beta = 1
        self.log_train({"train/loss": self.check_finite(loss), "train/recon": recon, "train/kl": kl}, len(features))
        return loss

    # ---- 3. latent means -----------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, features: torch.Tensor) -> torch.Tensor:
        parts = [vae.features(standardise(block))
                 for block, standardise, vae in zip(self.blocks(features), self.standardise, self.vaes)]
        # each VAE's latent standardised, so that every encoder weighs the same in the concatenation
        return torch.cat([(z - z.mean(0)) / z.std(0).clamp_min(1e-6) for z in parts], dim=1)

    def _eval_step(self, batch):
        features, y = batch
        if features.ndim > 2:  # images (the test split is not cached: Lightning builds its loader first)
            features = self.encode(features)
        self._latents.append((self.latents(features).float(), y))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    # ---- 4. clustering and its scores ------------------------------------------------------------
    def _gathered_latents(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._latents:
            return None
        z = gather_rows(torch.cat([z for z, _ in self._latents]))
        y = gather_rows(torch.cat([y for _, y in self._latents]))
        self._latents = []
        return z, y

    def cluster(self, z: torch.Tensor):
        """Hard assignments (and memberships for fuzzy c-means) of the latents, equal on every process."""
        if self.clusterer == "fuzzy":
            result = fuzzy_cmeans(z, self.num_clusters, m=self.fuzziness, seed=0)
            return result.assignments, result.memberships
        result = distributed_kmeans(z, self.num_clusters, gathered=True, n_init=self.n_init, seed=0)
        return result.assignments, None

    def on_validation_epoch_end(self) -> None:
        gathered = self._gathered_latents()
        if gathered is not None and not self.trainer.sanity_checking:
            z, y = gathered
            assignments, _ = self.cluster(z)
            self.log_dict({f"val/{k}": v for k, v in cluster_scores(y, assignments).items()}, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        gathered = self._gathered_latents()
        if gathered is None:
            return
        z, y = gathered
        assignments, memberships = self.cluster(z)
        self.log_dict({f"test/{k}": v for k, v in cluster_scores(y, assignments).items()}, sync_dist=True)
        if self.trainer.is_global_zero:
            self.save_artefacts(z, y, assignments, memberships)

    def save_artefacts(self, z, y, assignments, memberships) -> None:
        run_dir = Path(self.trainer.default_root_dir)
        log_cluster_pictures(self, assignments, self.num_clusters, None if memberships is None else memberships.max(1).values,
                             self.grid_per_cluster)
        if memberships is not None:
            np.savez_compressed(run_dir / "memberships.npz", memberships=memberships.cpu().numpy(),
                                assignments=assignments.cpu().numpy(), labels=y.cpu().numpy())
            points = torch.pca_lowrank(z - z.mean(0), q=2, center=False)[0][:, :2].cpu().numpy()
            log_image(self, "memberships", memberships_figure(
                memberships.cpu().numpy(), y.cpu().numpy(), points,
                f"fuzzy c-means, m = {self.fuzziness}: memberships of the test images"))
        if self.k_range is not None:
            rows = k_selection(z, range(self.k_range[0], self.k_range[1] + 1), seed=0)
            best = max(rows, key=lambda r: r["silhouette"])["k"]
            (run_dir / "k_selection.json").write_text(json.dumps({"rows": rows, "best_silhouette_k": best}, indent=2))
            log_image(self, "k_selection", k_selection_figure(rows, chosen=best))
            log.info("k by silhouette: %d (k_selection.json)", best)
