"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017), in one run.

Phases (Sec. 3-4, Fig. 3), lengths as fractions of training (`source_phase`):
  1. pre-training: source encoder M_s (`backbone`) and classifier C on source labels (Eq. 7);
  2. adversarial adaptation: M_s and C frozen; the target encoder M_t is initialised from M_s and
     trained against a domain discriminator D with the inverted-label GAN loss:
         min_D  L_advD = -E_s[log D(M_s(x_s))] - E_t[log(1 - D(M_t(x_t)))]     (Eq. 8)
         min_Mt L_advM = -E_t[log D(M_t(x_t))]                                 (Eq. 9)
  3. testing: target images go through M_t and C, source images through M_s and C.
Several optimizers (C+M_s, M_t, D), so Lightning's manual optimization.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError

from .base import optimizer_factory
from .components.bottleneck import pretrained_part
from .components.domain import domain_classifier
from .components.param_groups import backbone_and_rest_groups
from .components.stages import hold_frozen_parts_in_eval
from .domain_adaptation import DomainAdaptation


class ADDA(DomainAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, adversarial_optimizer=None,
                 source_phase: float = 0.5, disc_hidden: int = 500, disc_depth: int = 2, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if not 0.0 < source_phase < 1.0:
            raise ConfigError(f"model.source_phase={source_phase} must lie in (0, 1): the share of training spent "
                              f"pre-training on source before the adversarial phase")
        if common.get("scheduler") is not None:
            raise ConfigError("adda uses constant learning rates (manual optimization): set model.scheduler=null")
        self.automatic_optimization = False
        self.source_phase = source_phase
        self.adversarial_optimizer = (optimizer_factory(adversarial_optimizer, "model.adversarial_optimizer")
                                      or self.optimizer_factory)
        self.target_encoder = copy.deepcopy(self.backbone)
        self.discriminator = domain_classifier(self.backbone.num_features, disc_hidden, disc_depth)
        self.register_buffer("adapting", torch.tensor(False))

    def features(self, x, domain):
        encoder = self.target_encoder if domain == "target" and bool(self.adapting) else self.backbone
        return encoder(x)

    def configure_optimizers(self):
        # a pretrained encoder trains at backbone_lr_mult x lr in both phases (M_s, then M_t initialised from it)
        source_model = nn.ModuleList([self.backbone, self.classifier])
        source = self.optimizer_factory(params=backbone_and_rest_groups(
            source_model, pretrained_part(self.backbone), self.optimizer_factory, self.backbone_lr_mult))
        target = self.adversarial_optimizer(params=backbone_and_rest_groups(
            self.target_encoder, pretrained_part(self.target_encoder), self.adversarial_optimizer,
            self.backbone_lr_mult))
        disc = self.adversarial_optimizer(params=self.discriminator.parameters())
        return [source, target, disc]

    def on_train_start(self) -> None:
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            raise ConfigError("adda counts training in epochs (it takes 1 optimizer step per batch in phase 1 and "
                              "2 in phase 2): set trainer.max_epochs and data.steps_per_epoch, not trainer.max_steps")

    def on_fit_start(self) -> None:
        pass  # the "before" plot is drawn when adaptation starts: the source encoder on both domains

    def start_adaptation(self) -> None:
        """Phase 2 begins: M_t <- M_s (Sec. 4, 'we initialise the target model with the source')."""
        self.target_encoder.load_state_dict(self.backbone.state_dict())
        self.adapting.fill_(True)
        if self.tsne and self.trainer.is_global_zero:
            self.plot_features("before", {"source": self.backbone, "target": self.backbone})

    def training_step(self, batch, batch_idx):
        opt_source, opt_target, opt_disc = self.optimizers()
        (xs, ys), xt = batch["source"], batch["target"]
        if self.progress < self.source_phase:
            # phase 1: min_{M_s, C} L_cls (Eq. 7)
            loss = self.source_loss(self.classifier(self.backbone(xs)), ys)
            opt_source.zero_grad()
            self.manual_backward(self.with_all_parameters(self.check_finite(loss)))
            opt_source.step()
            return
        if not bool(self.adapting):
            self.start_adaptation()
        # M_s is frozen (eval mode, no gradient); M_t trains without dropout, so D compares source and
        # target features computed the same way rather than spotting dropout's zeros and scaling
        self.backbone.eval()
        self.target_encoder.train()
        for m in self.target_encoder.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                m.eval()
        hold_frozen_parts_in_eval(self.target_encoder)  # model.trainable_stages: frozen stages keep their statistics
        with torch.no_grad():
            fs = self.backbone(xs)
        ft = self.target_encoder(xt)
        # discriminator step, Eq. 8: source features labelled 1, target features 0
        d_logits = self.discriminator(torch.cat([fs, ft.detach()])).squeeze(1)
        d = torch.cat([fs.new_ones(len(fs)), fs.new_zeros(len(ft))])
        loss_d = F.binary_cross_entropy_with_logits(d_logits.float(), d)
        opt_disc.zero_grad()
        self.manual_backward(self.with_all_parameters(self.check_finite(loss_d, "train/disc_loss")))
        opt_disc.step()
        # target-encoder step, Eq. 9: the inverted label (target features labelled 1)
        loss_t = F.binary_cross_entropy_with_logits(self.discriminator(ft).squeeze(1).float(), d[: len(fs)].new_ones(len(ft)))
        opt_target.zero_grad()
        self.manual_backward(self.with_all_parameters(self.check_finite(loss_t, "train/target_adv_loss")))
        opt_target.step()
        self.log_train({"train/disc_loss": loss_d, "train/target_adv_loss": loss_t,
                        "train/disc_acc": ((d_logits > 0).float() == d).float().mean()}, len(d))
