"""What SimCLR, MoCo and rotation prediction share: the encoder, online evaluation, LR scaling.

A method subclasses `SSLMethod` and writes `pretext_step(views) -> (loss, features)`: the
pretext loss of a batch of views and the (global-pooled) encoder features of the first view,
which the online linear probe trains on. Labels reach only `OnlineEvaluator`.

`train_encoder: false` keeps the encoder at its random initialisation (only BatchNorm statistics
and the probe adapt): the random-init baseline, evaluated the same way.

`lr_scaling`: `none` | `linear` (lr x B / base_batch_size, Goyal et al. 2017; SimCLR with LARS) |
`sqrt` (lr x sqrt(B / base_batch_size); SimCLR Appendix B.1 for small batches), with B the
global batch (per-process batch x processes x accumulation). The probe's lr is not scaled.
"""
from __future__ import annotations

import math

import torch

from datamodules.errors import ConfigError

from .base import BaseMethod
from .components.backbones import create_backbone
from .evaluation.online import OnlineEvaluator

LR_SCALINGS = ("none", "linear", "sqrt")


class SSLMethod(BaseMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", evaluation: dict | None = None, train_encoder: bool = True,
                 lr_scaling: str = "none", base_batch_size: int = 256):
        super().__init__(optimizer, scheduler, scheduler_interval)
        if lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"model.lr_scaling={lr_scaling!r}; choices: {list(LR_SCALINGS)}")
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        self.online = OnlineEvaluator(self.backbone.num_features, num_classes, **(evaluation or {}))
        self.train_encoder = train_encoder
        self.lr_scaling, self.base_batch_size = lr_scaling, base_batch_size

    # ---- what a method writes --------------------------------------------------------------
    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def eval_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features kNN and the linear probe score (default: the encoder's pooled features of x)."""
        return self.backbone(x)

    def draw_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator for a pretext task's random draws (tiles, masks, noise): the DataModule's, seeded per
        process, so that under DDP every process draws its own (seed_everything gives all ranks one seed);
        None (torch's global generator) outside a Trainer."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return datamodule.device_generator(device) if hasattr(datamodule, "device_generator") else None

    def pretext_parameters(self):
        """Everything the pretext loss trains (default: all but the probe and frozen parts)."""
        probe = {id(p) for p in self.online.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in probe]

    # ---- optimisation ----------------------------------------------------------------------
    def parameter_groups(self):
        if not self.train_encoder:
            return [self.online.param_group()]
        pretext = {"params": self.pretext_parameters()}
        factor = self.lr_factor()
        if factor != 1.0:
            base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            if base_lr is None:
                raise ConfigError(f"model.lr_scaling={self.lr_scaling} needs model.optimizer.lr to be set")
            pretext["lr"] = base_lr * factor
        return [pretext, self.online.param_group()]

    def global_batch_size(self) -> int:
        trainer = self.trainer
        return trainer.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    def lr_factor(self) -> float:
        if self.lr_scaling == "none":
            return 1.0
        ratio = self.global_batch_size() / self.base_batch_size
        return ratio if self.lr_scaling == "linear" else math.sqrt(ratio)

    # ---- steps ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        views, y = batch
        if self.train_encoder:
            pretext, features = self.pretext_step(views)
            self.log("train/loss", self.check_finite(pretext), on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=len(y))
        else:
            with torch.no_grad():
                features = self.eval_features(views[0])
            pretext = 0.0
        return pretext + self.online.training_loss(self, features, y)

    def _eval(self, stage, batch, dataloader_idx):
        x, y = batch
        self.online.eval_step(self, stage, self.eval_features(x), y, dataloader_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval("test", batch, dataloader_idx)

    def on_validation_epoch_end(self):
        self.online.eval_epoch_end(self, "val")

    def on_test_epoch_end(self):
        self.online.eval_epoch_end(self, "test")
