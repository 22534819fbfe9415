"""FixMatch (Sohn et al. 2020): pseudo-labels from a weakly augmented view, enforced on a strongly
augmented view of the same image, only where the model is confident.

For a batch of B labeled (x_b, p_b) and mu B unlabeled u_b (Sec. 2.2; Algorithm 1):
    l_s = 1/B sum_b H(p_b, p_m(y | alpha(x_b)))                                        eq. 2
    q_b = p_m(y | alpha(u_b))  (weak view, no gradient),  q^_b = argmax q_b
    l_u = 1/(mu B) sum_b 1(max q_b >= tau) H(q^_b, p_m(y | A(u_b)))                    eq. 4
    loss = l_s + lambda_u l_u                                                         (Sec. 2.3)
with alpha the weak augmentation (flip and translation by up to 12.5% of the side) and A the strong one
(RandAugment with random magnitudes, then Cutout: `components/strong_augment.py`), tau = 0.95,
lambda_u = 1, mu = 7 (a data option: `data.mu`). The three parts go through the network in one batch,
as the paper's implementation does, so BatchNorm sees them together.

The views are made here, on the device, for the whole batch (each image its own draw, from this
process's generator). DDP: the mask is decided per example from its own weak view, so no state crosses
processes; l_u is the mean over this process's mu B examples and DDP's gradient average over processes
of equal batches is the mean over the global batch. The mask rate (`train/accepted`) is logged as an
epoch mean over processes (sync_dist). Flipping is off by default (digits are not mirror-symmetric; the
paper flips CIFAR, not SVHN): `model.weak.flip_p=0.5` for natural images.
"""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError, check_known_options
from datamodules.train_augment import AffineAugment

from .components.pseudo_labels import pseudo_label_loss
from .components.strong_augment import RANGES, StrongAugment
from .semisup_base import SemiSupervisedMethod


class FixMatch(SemiSupervisedMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "step", threshold: float = 0.95, lambda_u: float = 1.0,
                 weak: dict | None = None, strong: dict | None = None, backbone_lr_mult: float | None = None):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, scheduler_interval, backbone_lr_mult)
        self.save_hyperparameters(logger=False)
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"model.threshold={threshold} must lie in [0, 1) (the paper's tau: 0.95)")
        if lambda_u < 0:
            raise ConfigError(f"model.lambda_u={lambda_u} must be >= 0 (0 = supervised-only on weak views)")
        self.threshold, self.lambda_u = threshold, lambda_u
        weak = dict({"translate": 0.125, "flip_p": 0.0, "padding": "reflection"}, **(weak or {}))
        self.weak = AffineAugment.from_config(weak)
        strong = dict(strong or {})
        check_known_options(strong, ["num_ops", "cutout", "ops"], "model.strong")
        try:
            self.strong = StrongAugment(**strong)
        except ValueError as err:
            raise ConfigError(f"model.strong.{err}") from None
        if not 0 <= self.strong.cutout <= 1:
            raise ConfigError(f"model.strong.cutout={self.strong.cutout} must lie in [0, 1] (fraction of the side)")

    def training_step(self, batch, batch_idx):
        x, y = batch["labeled"]
        u = batch["unlabeled"]
        g = self.generator(x.device)
        weak_x, weak_u, strong_u = self.weak(x, g), self.weak(u, g), self.strong(u, g)
        logits = self(torch.cat([weak_x, weak_u, strong_u]))
        logits_x, logits_weak, logits_strong = logits.split([len(x), len(u), len(u)])
        supervised = self.metrics.log_step(self, "train", logits_x, y)                           # eq. 2
        unsupervised, _, accepted = pseudo_label_loss(logits_strong, self.threshold, logits_weak)  # eq. 4
        loss = supervised + self.lambda_u * unsupervised
        self.log_unlabeled(unsupervised, loss, self.lambda_u, accepted, len(u))
        return self.check_finite(loss)


__all__ = ["FixMatch", "RANGES"]
