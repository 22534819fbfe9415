"""Mean Teacher (Tarvainen & Valpola 2017): a student trained on labels plus a consistency cost towards
a teacher whose weights are the exponential moving average of the student's.

    theta'_t = a theta'_{t-1} + (1 - a) theta_t                                     eq. 2 (Sec. 2)
    J(theta) = E_{x, eta', eta} || f(x, theta', eta') - f(x, theta, eta) ||^2          eq. 1
    loss = CE(labeled) + w(t) J,   w(t) = w_max exp(-5 (1 - T)^2) ramped up over the first
                                  `rampup` fraction of the run, T = t / rampup (Sec. 3.2, App. B)
f are softmax outputs; eta, eta' two independent input noises: each image gets two draws of the
translation augmentation (and Gaussian input noise), one seen by the student, one by the teacher.
J is taken on every image of the batch, labeled and unlabeled. The decay is a = min(1 - 1/(t + 1),
ema_decay) (the authors' code: the teacher follows closely at first); the teacher never receives a
gradient (its parameters have requires_grad False and it runs under no_grad) and is updated after
each optimizer step. Evaluation (`val/*`, `test/acc`) uses the teacher, as the paper reports
(`model.evaluate_with=student` for the student).

Input noise: the paper's Gaussian sigma = 0.15 for a network trained from scratch; none by default for a
backbone that starts pretrained (`noise_std: null`). Measured on Office-31 with the ImageNet Lite0 (100 steps):
with sigma 0.15 the BatchNorm running statistics, gathered on noisy views, do not fit clean images, so the
student in eval mode scores 10% on val against 50% with batch statistics; without the noise 55% and 52%.

DDP: the optimizer step is the same on every process, so the EMA (computed locally from identical
weights) stays identical across processes with no communication; BatchNorm statistics are copied from
the student, whose buffers DDP broadcasts. J is per example; the logged statistics use sync_dist.
"""
from __future__ import annotations

import torch
from torch import nn

from datamodules.errors import ConfigError
from datamodules.train_augment import AffineAugment

from .components.ema import ema_update, frozen_copy
from .components.param_groups import starts_pretrained
from .components.pseudo_labels import softmax_mse
from .components.schedules import sigmoid_rampup
from .semisup_base import SemiSupervisedMethod

EVALUATE_WITH = ("teacher", "student")


PAPER_NOISE_STD = 0.15  # Tarvainen & Valpola (2017), App. B: Gaussian input noise


def input_noise_std(noise_std: float | None, backbone: dict) -> float:
    """`null`: the paper's 0.15 from scratch, 0 for a pretrained backbone (its BatchNorm statistics, estimated on
    noisy views, would not fit the clean images it is evaluated on)."""
    if noise_std is None:
        return 0.0 if starts_pretrained(backbone) else PAPER_NOISE_STD
    if noise_std < 0:
        raise ConfigError(f"model.noise_std={noise_std} must be >= 0 (null: {PAPER_NOISE_STD} from scratch, 0 pretrained)")
    return float(noise_std)


def mean_teacher_decay(step: int, ema_decay: float) -> float:
    """a_t = min(1 - 1/(t + 1), ema_decay): the true average of the weights so far until it reaches ema_decay."""
    return min(1.0 - 1.0 / (step + 1), ema_decay)


class MeanTeacher(SemiSupervisedMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", ema_decay: float = 0.99, consistency: float = 10.0,
                 rampup: float = 0.4, translate: float = 0.125, noise_std: float | None = None,
                 evaluate_with: str = "teacher", backbone_lr_mult: float | None = None):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, scheduler_interval, backbone_lr_mult)
        self.save_hyperparameters(logger=False)
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay={ema_decay} must lie in [0, 1) (the paper: 0.99, then 0.999)")
        if consistency < 0:
            raise ConfigError(f"model.consistency={consistency} must be >= 0 (0 = supervised-only)")
        if not 0.0 <= rampup <= 1.0:
            raise ConfigError(f"model.rampup={rampup} must lie in [0, 1] (fraction of the run)")
        if evaluate_with not in EVALUATE_WITH:
            raise ConfigError(f"model.evaluate_with={evaluate_with!r}; choices: {list(EVALUATE_WITH)}")
        self.ema_decay, self.consistency, self.rampup = ema_decay, consistency, rampup
        self.noise_std, self.evaluate_with = input_noise_std(noise_std, backbone), evaluate_with
        self.noise = AffineAugment(translate=translate, padding="reflection")
        self.teacher = frozen_copy(nn.Sequential(self.backbone, self.classifier))

    def evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x) if self.evaluate_with == "teacher" else self(x)

    @torch.no_grad()
    def evaluation_features(self, x):
        if self.evaluate_with == "student":
            return super().evaluation_features(x)
        features = self.teacher[0](x)
        return features, self.teacher[1](features)

    def view(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One draw of the input noise eta: a random translation and additive Gaussian noise."""
        x = self.noise(x, g)
        if not self.noise_std:
            return x
        return x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)

    def weight(self) -> float:
        """w(t): the consistency weight with the sigmoid ramp-up over the first `rampup` of the run."""
        return self.consistency * sigmoid_rampup(self.progress, self.rampup)

    def training_step(self, batch, batch_idx):
        x, y = batch["labeled"]
        u = batch["unlabeled"]
        images = torch.cat([x, u])
        g = self.generator(x.device)
        student = self(self.view(images, g))
        with torch.no_grad():
            teacher = self.teacher(self.view(images, g))
        supervised = self.metrics.log_step(self, "train", student[: len(y)], y)
        consistency = softmax_mse(student, teacher)  # eq. 1, on labeled and unlabeled images
        weight = self.weight()
        loss = supervised + weight * consistency
        self.log_unlabeled(consistency, loss, weight, None, len(images))
        return self.check_finite(loss)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """eq. 2, after the optimizer step (Lightning calls this hook after it)."""
        ema_update(self.teacher, nn.Sequential(self.backbone, self.classifier),
                   mean_teacher_decay(self.global_step, self.ema_decay))
