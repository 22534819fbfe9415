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
pseudo-labels are (`val/pseudo_acc`), never by the loss. What the semi-supervised methods share (network, evaluation, logged statistics) is
in `semisup_base.SemiSupervisedMethod`; the masked pseudo-label loss in `components/pseudo_labels.py`.
"""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError

from .components.pseudo_labels import pseudo_label_loss
from .semisup_base import SemiSupervisedMethod

__all__ = ["PseudoLabel", "alpha_schedule", "pseudo_label_loss"]


def alpha_schedule(t: float, t1: float, t2: float, alpha_f: float) -> float:
    """alpha(t) of Lee (2013), eq. 16."""
    if t < t1:
        return 0.0
    if t < t2:
        return alpha_f * (t - t1) / (t2 - t1)
    return float(alpha_f)


PSEUDO_LABELS_FROM = ("eval", "train")  # the network as it predicts (dropout off) | the training pass itself


class PseudoLabel(SemiSupervisedMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", t1: float = 0.25, t2: float = 0.75, alpha_f: float = 3.0,
                 confidence_threshold: float = 0.0, use_unlabeled: bool = True, pseudo_labels_from: str = "eval",
                 backbone_lr_mult: float | None = None):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, scheduler_interval, backbone_lr_mult)
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
        if alpha == 0.0:  # before T1 (or the baseline): labeled data only, no forward pass on x'
            self.log_alpha(alpha)
            return self.check_finite(self.metrics.log_step(self, "train", self(x), y))
        x_u = batch["unlabeled"]
        labeling = self.labeling_logits(x_u) if self.pseudo_labels_from == "eval" else None  # y' source, eq. 15
        logits = self(torch.cat([x, x_u]))  # one training forward pass, so BatchNorm sees both parts
        supervised = self.metrics.log_step(self, "train", logits[: len(y)], y)
        unsupervised, _, accepted = pseudo_label_loss(logits[len(y) :], self.threshold, labeling)
        loss = supervised + alpha * unsupervised  # eq. 15
        self.log_unlabeled(unsupervised, loss, alpha, accepted, len(x_u))
        return self.check_finite(loss)
