"""WDAN: weighted domain adaptation network (Yan et al., "Mind the class weight bias", CVPR 2017).

DAN's MMD assumes both domains share a class prior; where they differ (MNIST, USPS and SVHN each have
their own), aligning the two marginals pulls target examples towards the wrong classes. WDAN weighs every
source example by its class weight alpha_{y_i} = p_t(y_i) / p_s(y_i) inside the MMD:

    MMD_w^2 = || sum_i alpha_{y_i} phi(x_i^s) / sum_i alpha_{y_i} - 1/N sum_j phi(x_j^t) ||_H^2

and trains (the seed's objective, Yan et al. Eq. 8)

    min_{W, Y^t, alpha}  1/M sum_i l(x_i^s, y_i^s) + gamma 1/N sum_j l(x_j^t, y^_j^t) + lambda sum_l MMD_{l,w}^2

alternating over its three unknowns: for fixed weights W the pseudo-labels y^_j^t minimising the
cross-entropy are the classifier's argmax; alpha follows from the source prior (the source training
labels) and the target prior estimated from the pseudo-labels of the previous epoch's target batches
(Laplace-smoothed by `prior_smoothing`; alpha = 1 before the first estimate, i.e. DAN). The MMD is DAN's
multi-kernel one (`components.domain.mk_mmd2`) on the adapted layers. `ramp: true` multiplies gamma and
lambda by DANN's lambda_p (early pseudo-labels are noise).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from datamodules.errors import ConfigError

from .components.domain import class_prior, class_weights, mk_mmd2
from .domain_adaptation import DiscrepancyAdaptation


class WDAN(DiscrepancyAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, gamma: float = 0.1,
                 kernel_mul: float = 2.0, kernel_num: int = 5, prior_smoothing: float = 1.0,
                 estimator: str = "quadratic", kernel_weights: str = "uniform", **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if (estimator, kernel_weights) != ("quadratic", "uniform"):
            raise ConfigError(f"model=wdan weighs DAN's quadratic MMD estimate with uniform kernel weights; got "
                              f"model.estimator={estimator!r}, model.kernel_weights={kernel_weights!r} "
                              f"(choices: estimator=quadratic, kernel_weights=uniform)")
        if gamma < 0:
            raise ConfigError(f"model.gamma={gamma} must be >= 0 (the pseudo-label cross-entropy's weight)")
        if prior_smoothing < 0:
            raise ConfigError(f"model.prior_smoothing={prior_smoothing} must be >= 0 (a Laplace count per class)")
        self.gamma, self.kernel_mul, self.kernel_num, self.prior_smoothing = gamma, kernel_mul, kernel_num, prior_smoothing
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("source_prior", uniform.clone())
        self.register_buffer("target_prior", uniform.clone())
        self.register_buffer("pseudo_counts", torch.zeros(num_classes))  # this epoch's target pseudo-labels

    def on_fit_start(self) -> None:
        super().on_fit_start()
        source = getattr(getattr(self.trainer, "datamodule", None), "source", None)
        labels = getattr(getattr(source, "train", None), "labels", None)
        if labels is not None:
            self.source_prior.copy_(class_prior(torch.as_tensor(labels), self.num_classes))
            self.target_prior.copy_(self.source_prior)  # alpha = 1 until the first estimate

    @property
    def alpha(self) -> torch.Tensor:
        """alpha_c = p_t(c) / p_s(c)."""
        return class_weights(self.source_prior, self.target_prior)

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        x, n = torch.cat([xs, xt]), len(xs)
        logits, adapted = self.adapted_activations(x)
        loss_s = self.source_loss(logits[:n], ys)
        pseudo = logits[n:].detach().argmax(1)  # argmin over y^ of the target cross-entropy, W fixed
        loss_t = F.cross_entropy(logits[n:].float(), pseudo)
        self.pseudo_counts += torch.bincount(pseudo, minlength=self.num_classes).to(self.pseudo_counts)
        alpha = self.alpha[ys]
        loss_mmd = sum(mk_mmd2(a[:n], a[n:], self.kernel_mul, self.kernel_num, source_weights=alpha) for a in adapted)
        ramp = self.adaptation_weight() / self.trade_off if self.trade_off else 0.0
        self.log_train({"train/discrepancy": loss_mmd, "train/pseudo_label_loss": loss_t}, n, on_step=True)
        return self.check_finite(loss_s + self.gamma * ramp * loss_t + self.adaptation_weight() * loss_mmd)

    def on_train_epoch_end(self) -> None:
        """The target prior from this epoch's pseudo-labels (every process's), for the next epoch's alpha."""
        super().on_train_epoch_end()
        counts = self.pseudo_counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        if counts.sum() > 0:
            smoothed = counts + self.prior_smoothing
            self.target_prior.copy_(smoothed / smoothed.sum())
        self.pseudo_counts.zero_()
        for c, a in enumerate(self.alpha.tolist()):
            self.log(f"train/class_weight/{c}", a, sync_dist=False)
