"""DCGAN (Radford et al. 2016) whose discriminator trunk is the encoder (Sec. 5.1: "using GANs as a feature
extractor"): the discriminator must tell real images from generated ones, and the features it learns for that
are reused downstream.

    G: z ~ N(0, I) -> image (projection, upsampling convolutions with BatchNorm and ReLU, tanh: `ConvDecoder`)
    D = head o f, f the encoder (`model.backbone`), head a linear logit
    D step:  min_D  -log D(x) - log(1 - D(G(z)))          (Goodfellow et al. 2014, Eq. 1)
    G step:  min_G  -log D(G(z))                          (non-saturating)

Two optimizers under Lightning's manual optimisation (one D step, then one G step per batch; Adam with
beta1 = 0.5, as in the paper); the online probe trains with the discriminator's optimizer on detached features
of the real images. Real and generated images pass through D as separate batches (so BatchNorm normalises each on
its own, the DCGAN practice); only the real batches update D's running statistics, which kNN and the probe use
at test time (with the fake batches mixed in: 71.4% kNN / 20.8% linear on MNIST, below the random init).

DDP: this method mixes examples through BatchNorm (in D, on the real and the fake batch, and in G): the
statistics are those of each process's batch (as DCGAN on several GPUs without SyncBN; `trainer.sync_batchnorm=
true` on GPUs makes them global), gradients are averaged by DDP, and every process draws its own noise z
(`draw_generator`), so the processes generate different images. tests/test_pretext.py runs it on two CPU processes.
"""
from __future__ import annotations

import torch
from torch import nn

from .components.adversarial import discriminator_loss, generator_loss
from .components.conv_decoder import ConvDecoder
from .components.modes import running_stats_frozen
from .components.pretext import normal_like
from .ssl_base import SSLMethod


class DCGANPretext(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, image_size: int, optimizer, scheduler=None,
                 latent_dim: int = 64, generator: dict | None = None, **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        self.generator = ConvDecoder(latent_dim, in_chans, image_size, **(generator or {}))
        self.disc_head = nn.Linear(self.backbone.num_features, 1)

    def setup(self, stage: str) -> None:
        """DDP: each of the two backward passes leaves the other network without gradients, which DDP must be told
        (the `ddp_find_unused_parameters_true` strategy), before it wraps the module."""
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.disc_head(h).float(), h

    def sample(self, n: int) -> torch.Tensor:
        z = normal_like(torch.empty(n, self.latent_dim, device=self.device), self.draw_generator(self.device))
        return self.generator(z)

    def configure_optimizers(self):
        generator = {id(p) for p in self.generator.parameters()}
        d_params = [p for p in self.pretext_parameters() if id(p) not in generator]
        opt_d = self.optimizer_factory(params=[{"params": d_params}, self.online.param_group()] if self.train_encoder
                                       else [self.online.param_group()])
        opt_g = self.optimizer_factory(params=list(self.generator.parameters()))
        return [opt_d, opt_g]

    def training_step(self, batch, batch_idx):
        views, y = batch
        x = views[0]
        opt_d, opt_g = self.optimizers()
        # D step (the probe rides along on the real images' detached features)
        real_logits, h = self.discriminate(x)
        fake = self.sample(len(x))
        with running_stats_frozen(self.backbone):  # BatchNorm's running statistics: of real images only
            fake_logits, _ = self.discriminate(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
        probe = self.online.training_loss(self, h, y)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward((self.check_finite(d_loss) if self.train_encoder else 0.0) + probe)
        opt_d.step()
        if not self.train_encoder:
            return
        # G step: fool the updated D
        with running_stats_frozen(self.backbone):
            g_loss = generator_loss(self.discriminate(fake)[0])
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(self.check_finite(g_loss, "train/g_loss"))
        opt_g.step()
        self.log_train({"train/loss": d_loss, "train/g_loss": g_loss,
                        "train/d_real": torch.sigmoid(real_logits).mean(),
                        "train/d_fake": torch.sigmoid(fake_logits).mean()}, batch_size=len(x))
