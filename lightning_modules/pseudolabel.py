"""Pseudo-Label (Lee 2013): self-training on unlabeled data with the network's own argmax predictions.

For unlabeled x, the pseudo-label is the class of highest predicted probability (Lee 2013, eq. 15):
    y'_i = 1 if i = argmax_i' f_i'(x) else 0,
and the loss of a minibatch of n labeled and n' unlabeled examples is (eq. 15-16)
    L = 1/n sum CE(y, f(x)) + alpha(t) * 1/n' sum CE(y', f(x')),
with the weight ramped up so early, noisy pseudo-labels do little harm (eq. 16):
    alpha(t) = 0                              t < T1
             = alpha_f (t - T1) / (T2 - T1)   T1 <= t < T2
             = alpha_f                        T2 <= t
t is the fraction of the run done (batches done / the run's batches), so T1 and T2 are fractions too:
Lee's T1 = 100 and T2 = 600 epochs are 0.1 and 0.6 of a 1,000-epoch run; absolute epochs would leave
the term off in a run shorter than T1. An epoch is one pass over the unlabeled part.
Pseudo-labels are recomputed at every weight update with the current network and carry no gradient.
Lee trains a dropout network and takes y' as the class of maximum predicted probability; we read
that as the network's prediction, made as at test time: dropout off (`pseudo_labels_from: eval`,
default; a no-gradient forward pass of x' in eval mode). The loss is then taken on the usual
training forward pass (dropout on), so it pulls the dropout network towards the deterministic
network's predictions. `pseudo_labels_from: train` takes y' from that same dropout
pass instead (its own argmax: a weaker, entropy-minimisation-only signal). `confidence_threshold` > 0
keeps only pseudo-labels whose probability reaches it (the others count as zero in the 1/n' mean).

`alpha_f=0` (or `use_unlabeled=false`) is the supervised-only baseline on the same labeled set and
the same number of steps. Batches come from `SemiSupervisedDataModule`, whose unlabeled part holds
images only; its hidden labels are used only by validation loader 0, to log how accurate the
pseudo-labels are (`val/pseudo_acc`), never by the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ConfigError

from .base import BaseMethod, ClassificationMetrics
from .components.backbones import create_backbone


def alpha_schedule(t: float, t1: float, t2: float, alpha_f: float) -> float:
    """alpha(t) of Lee (2013), eq. 16."""
    if t < t1:
        return 0.0
    if t < t2:
        return alpha_f * (t - t1) / (t2 - t1)
    return float(alpha_f)


def pseudo_label_loss(logits_u: torch.Tensor, threshold: float = 0.0,
                      labeling_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1/n' sum CE(y', f(x')) with y' = argmax of `labeling_logits` (default: `logits_u` itself; no
    gradient through y'); pseudo-labels whose probability is below `threshold` are masked out.
    Returns (loss, pseudo-labels, accepted mask)."""
    source = logits_u if labeling_logits is None else labeling_logits
    with torch.no_grad():
        confidence, pseudo = source.detach().float().softmax(1).max(1)
        accepted = confidence >= threshold
    per_example = F.cross_entropy(logits_u.float(), pseudo, reduction="none")
    return (per_example * accepted).mean(), pseudo, accepted


PSEUDO_LABELS_FROM = ("eval", "train")  # the network as it predicts (dropout off) | the training pass itself


class PseudoLabel(BaseMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", t1: float = 0.25, t2: float = 0.75, alpha_f: float = 3.0,
                 confidence_threshold: float = 0.0, use_unlabeled: bool = True, pseudo_labels_from: str = "eval"):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(logger=False)
        if not 1 >= t2 > t1 >= 0:
            raise ConfigError(f"model.t1={t1}, model.t2={t2}: need 0 <= t1 < t2 <= 1 (fractions of the run; "
                              f"Lee's T1=100, T2=600 epochs are 0.1 and 0.6 of a 1,000-epoch run)")
        if alpha_f < 0:
            raise ConfigError(f"model.alpha_f={alpha_f} must be >= 0 (0 = supervised-only baseline)")
        if not 0.0 <= confidence_threshold < 1.0:
            raise ConfigError(f"model.confidence_threshold={confidence_threshold} must lie in [0, 1)")
        if pseudo_labels_from not in PSEUDO_LABELS_FROM:
            raise ConfigError(f"model.pseudo_labels_from={pseudo_labels_from!r}; choices: {list(PSEUDO_LABELS_FROM)}")
        self.pseudo_labels_from = pseudo_labels_from
        self.t1, self.t2, self.alpha_f = t1, t2, alpha_f
        self.threshold = confidence_threshold
        self.use_unlabeled = use_unlabeled and alpha_f > 0
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        self.metrics = ClassificationMetrics(num_classes)
        self.pseudo_acc = MulticlassAccuracy(num_classes, average="micro")
        self.pseudo_acc_accepted = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    @torch.no_grad()
    def labeling_logits(self, x_u: torch.Tensor) -> torch.Tensor:
        """f(x') of the current network as it predicts (eval mode: dropout off, BatchNorm running
        statistics), without gradient; every submodule's mode is restored afterwards."""
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            return self(x_u)
        finally:
            for module, training in modes:
                module.training = training

    def alpha(self) -> float:
        """alpha(t) with t the fraction of the run done, so the term switches on in any budget."""
        return alpha_schedule(self.progress, self.t1, self.t2, self.alpha_f) if self.use_unlabeled else 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch["labeled"]
        alpha = self.alpha()
        self.log("train/alpha", alpha, on_step=False, on_epoch=True, batch_size=len(y))
        if alpha == 0.0:  # before T1 (or the baseline): labeled data only, no forward pass on x'
            return self.check_finite(self.metrics.log_step(self, "train", self(x), y))
        x_u = batch["unlabeled"]
        labeling = self.labeling_logits(x_u) if self.pseudo_labels_from == "eval" else None  # y' source, eq. 15
        logits = self(torch.cat([x, x_u]))  # one training forward pass, so BatchNorm sees both parts
        supervised = self.metrics.log_step(self, "train", logits[: len(y)], y)
        unsupervised, _, accepted = pseudo_label_loss(logits[len(y) :], self.threshold, labeling)
        loss = supervised + alpha * unsupervised  # eq. 15
        n_u = len(x_u)
        self.log("train/unlabeled_loss", unsupervised, on_step=False, on_epoch=True, batch_size=n_u)
        self.log("train/accepted", accepted.float().mean(), on_step=False, on_epoch=True, batch_size=n_u)
        self.log("train/total_loss", loss, on_step=True, on_epoch=True, batch_size=n_u)
        return self.check_finite(loss)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        logits = self(x)
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
        self.metrics.log_step(self, "test", self(x), y)
