"""What every semi-supervised method shares (Pseudo-Label, FixMatch, Mean Teacher).

- the network: `backbone` (exported as encoder.pt) + a linear `classifier`;
- batches `{"labeled": (x, y), "unlabeled": x}` from `SemiSupervisedDataModule`: the unlabeled part is
  images only, so its hidden labels cannot reach a loss;
- validation loader 0 is the unlabeled part *with* its hidden labels, used only to score the
  pseudo-labels (`val/pseudo_acc`, `val/pseudo_accepted`, `val/pseudo_acc_accepted`, with the method's
  `threshold`); loader 1 the labeled val split (`val/acc`); `test/acc` on the test split;
- the training scalars every method logs, so the dynamics callback reads the same names for all:
  `train/alpha` (weight of the unlabeled term), `train/accepted` (mask rate: fraction of unlabeled
  examples whose pseudo-label is used), `train/unlabeled_loss`. They go through `log_train`, whose epoch
  means are averaged over processes (sync_dist) under DDP;
- `evaluation_logits(x)`: the network that predicts (Mean Teacher: the EMA teacher) and
  `evaluation_features(x)` for the t-SNE maps of `PseudoLabelDynamics`;
- a generator for on-device augmentation draws, per process under DDP;
- per-part learning rates: a backbone that starts from pretrained weights trains at `backbone_lr_mult`
  (default 0.1) x the head's lr, as in fine-tuning; one from scratch at the same lr (the default `null`
  resolves to 1). On Office-31 with the ImageNet Lite0 at the full lr, Pseudo-Label's unlabeled term
  wrecked the pretrained features (16.6% test accuracy against 63.9% supervised-only; with 0.1x, 58.5
  against 55.8: benchmarks/results/semisup.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


from .base import BaseMethod, ClassificationMetrics
from .components.backbones import create_backbone
from .components.param_groups import backbone_lr_multiplier, head_and_backbone_groups


class SemiSupervisedMethod(BaseMethod):
    threshold: float = 0.0  # pseudo-labels scored as accepted in validation (FixMatch's tau)

    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", backbone_lr_mult: float | None = None):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.backbone_lr_mult = backbone_lr_multiplier(backbone_lr_mult, backbone)
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        self.metrics = ClassificationMetrics(num_classes)
        self.pseudo_acc = MulticlassAccuracy(num_classes, average="micro")
        self.pseudo_acc_accepted = MulticlassAccuracy(num_classes, average="micro")
        self._generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def parameter_groups(self):
        return head_and_backbone_groups(self.classifier, self.backbone, self.optimizer_factory, self.backbone_lr_mult)

    # ---- what predicts: the student by default (Mean Teacher overrides with its teacher) -------------
    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    @torch.no_grad()
    def evaluation_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of the predicting network, for plots."""
        features = self.backbone(x)
        return features, self.classifier(features)

    # ---- augmentation draws on the device -------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        """Seeded from the run seed and the process rank, so every DDP process draws its own views."""
        if self._generator is None or self._generator.device != torch.device(device):
            rank = self.global_rank if self._trainer is not None else 0
            self._generator = torch.Generator(device=device).manual_seed(torch.initial_seed() + 7_919 * (rank + 1))
        return self._generator

    # ---- the statistics every method logs ------------------------------------------------------------
    def log_unlabeled(self, loss: torch.Tensor, total: torch.Tensor, alpha: float, accepted: torch.Tensor | None,
                      n_unlabeled: int) -> None:
        values = {"train/unlabeled_loss": loss, "train/total_loss": total}
        if accepted is not None:
            values["train/accepted"] = accepted.float().mean()
        self.log_train(values, batch_size=n_unlabeled)
        self.log_alpha(alpha)

    def log_alpha(self, alpha: float) -> None:
        """The weight of the unlabeled term; its epoch value is the mean over steps."""
        self.log_train({"train/alpha": alpha}, batch_size=1)

    # ---- evaluation shared by all ---------------------------------------------------------------------
    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        logits = self.evaluation_logits(x)
        if dataloader_idx == 0:  # the unlabeled training part, with its hidden labels: pseudo-label quality
            confidence, pseudo = logits.softmax(1).max(1)
            accepted = confidence >= self.threshold
            self.pseudo_acc(pseudo, y)
            self.log("val/pseudo_acc", self.pseudo_acc, on_epoch=True, add_dataloader_idx=False, batch_size=len(y))
            self.log("val/pseudo_accepted", accepted.float().mean(), on_epoch=True, sync_dist=True,
                     add_dataloader_idx=False, batch_size=len(y))
            if accepted.any():
                self.pseudo_acc_accepted(pseudo[accepted], y[accepted])
                self.log("val/pseudo_acc_accepted", self.pseudo_acc_accepted, on_epoch=True,
                         add_dataloader_idx=False, batch_size=int(accepted.sum()))
        else:  # the labeled val split
            accuracy = self.metrics.acc["val_acc"]
            accuracy(logits, y)
            self.log("val/loss", F.cross_entropy(logits.float(), y), on_epoch=True, sync_dist=True,
                     add_dataloader_idx=False, batch_size=len(y))
            self.log("val/acc", accuracy, on_epoch=True, prog_bar=True, add_dataloader_idx=False, batch_size=len(y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "test", self.evaluation_logits(x), y)
