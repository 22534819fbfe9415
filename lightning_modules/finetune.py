"""Fine-tuning a pretrained backbone with a new linear head: the transfer-learning strategies.

- `linear`  ConvNet as fixed feature extractor: the backbone is frozen, BatchNorm statistics and
            dropout included (the backbone stays in eval mode), and only the new head is trained.
- `partial` the last `trainable_stages` stages of the backbone are trained (at `backbone_lr_mult`
            times the learning rate), the earlier ones are frozen (their BatchNorm layers in eval mode).
- `full`    everything is trained, the backbone at `backbone_lr_mult` (default 0.1) times the
            learning rate so the pretrained features are not erased (catastrophic forgetting).

Pretrained weights come through `backbone`: `pretrained: true` (timm, online),
`pretrained_file` (local file via timm's `pretrained_cfg_overlay`), or `checkpoint`
(`encoder.pt` of another run, or a project `.ckpt`).

Cached features (`cache_features`, default true): with `linear` the frozen backbone in eval mode gives
every image the same features in every epoch, so, when the training images are not augmented, the
features of the train and val splits are computed once at the start of fitting and the head trains on
them (the same batches in the same order as the per-step path; the test split still runs through the
whole network). On a CPU this removes the backbone's cost from every epoch but the first.

Stages: `components/stages.py` (timm's coarse parameter groups).
"""
from __future__ import annotations

import logging

import torch

from datamodules.errors import ConfigError

from .components.feature_cache import CachedSplits, feature_store
from .components.param_groups import head_and_backbone_groups, starts_pretrained
from .components.stages import backbone_stages, frozen_norm_layers, stage_starts, train_last_stages
from .supervised import Supervised

log = logging.getLogger(__name__)

STRATEGIES = ("linear", "partial", "full")


class Finetune(Supervised):
    """The supervised classifier (backbone + new linear head, cross-entropy), with parts frozen."""

    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", strategy: str = "full", trainable_stages: int = 1,
                 backbone_lr_mult: float = 0.1, cache_features: bool = True):
        if strategy not in STRATEGIES:
            raise ConfigError(f"model.strategy={strategy!r} is not a fine-tuning strategy; choices: {list(STRATEGIES)}")
        if strategy != "linear" and not backbone_lr_mult > 0:
            raise ConfigError(f"model.backbone_lr_mult={backbone_lr_mult} must be > 0 (model.strategy=linear freezes the backbone)")
        if not starts_pretrained(backbone):
            log.warning("model.strategy=%s without pretrained weights (model.backbone.checkpoint / pretrained / "
                        "pretrained_file): the backbone starts from random initialisation", strategy)
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, scheduler_interval)
        self.strategy, self.backbone_lr_mult = strategy, float(backbone_lr_mult)
        self.cache_features = bool(cache_features) and strategy == "linear"
        self.cached_splits = CachedSplits()  # train and val as features, while the head trains (linear)
        self.stages = backbone_stages(self.backbone)
        self.trainable_stages = self._check_trainable_stages(trainable_stages)
        train_last_stages(self.backbone, self.stages, self.trainable_stages)
        self.frozen_norms = frozen_norm_layers(self.backbone)
        self.train()  # modules start in train mode; put the frozen ones in eval mode now

    def _check_trainable_stages(self, trainable_stages: int) -> int:
        n = len(self.stages)
        if self.strategy == "linear":
            return 0
        if self.strategy == "full":
            return n
        if not 1 <= int(trainable_stages) <= n:
            raise ConfigError(
                f"model.trainable_stages={trainable_stages} must lie in [1, {n}] for model.strategy=partial: "
                f"backbone {self.backbone.backbone_spec['name']} has {n} stages starting at {stage_starts(self.stages)} "
                f"(use model.strategy=linear for 0 and model.strategy=full for all)"
            )
        return int(trainable_stages)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode: BatchNorm running statistics (and, for `linear`, dropout)
        do not change while the head trains."""
        super().train(mode)
        if self.strategy == "linear":
            self.backbone.eval()
        else:
            for layer in self.frozen_norms:
                layer.eval()
        return self

    def parameter_groups(self):
        return head_and_backbone_groups(self.classifier, self.backbone, self.optimizer_factory, self.backbone_lr_mult)

    # ---- linear: features computed once ------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Swap the datamodule's train and val splits for their cached features, where that is exact:
        `linear` (frozen backbone, eval mode) and no training augmentation."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.cache_features or datamodule is None:
            return
        if getattr(datamodule, "train_augment", None) is not None:
            log.info("model.cache_features: off, the training images are augmented (each epoch differs)")
            return
        self.cached_splits.swap(datamodule, ("train", "val"), self.backbone, self.device, self.use_channels_last,
                                store=feature_store(datamodule))
        log.info("model.strategy=linear: the head trains on features computed once (%d train, %d val images)",
                 len(datamodule.split("train")), len(datamodule.split("val")))

    def on_fit_end(self) -> None:
        self.cached_splits.restore(self.trainer.datamodule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cached features are (N, D) vectors and go to the head directly; images are (N, C, H, W).
        return self.classifier(x) if x.ndim == 2 else super().forward(x)
