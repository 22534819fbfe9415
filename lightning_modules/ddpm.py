"""DDPM (Ho et al. 2020): an epsilon-prediction U-Net trained with L_simple, sampled by Algorithm 2 or DDIM.

Training (Algorithm 1): x_0 ~ data, t ~ U{1..T}, eps ~ N(0, I), gradient step on
|| eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2 (in fp32 under AMP), with
gradient clipping and an EMA of the weights (warm-up decay) that is used for every sample.

Every `grid.every_n_epochs` epochs a grid from fixed noise is written to <run dir>/samples/ and sent to the
loggers that take images. At test time samples are drawn with each sampler in `evaluation.samplers` and
scored with `test/fid` on features of a project-trained classifier (see evaluation/fid.py); with
`sample_only=true` (and `train=false ckpt_path=...`) the test phase only writes samples (npz) and a grid.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from datamodules.errors import ConfigError
from datamodules.splits import stratified_subset

from .base import BaseMethod
from .components.diffusion import GaussianDiffusion, ddim_timesteps
from .components.ema import ema_update, frozen_copy, warmup_momentum
from .components.modes import eval_mode
from .components.unet import UNet
from .evaluation.fid import cached_classifier, class_histogram, frechet_distance, quantize
from .evaluation.images import log_image

log = logging.getLogger("transferlab")
SAMPLERS = ("ancestral", "ddim")


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> torch.Tensor:
    """[-1, 1] images -> a PNG grid at `path`; returns the grid (C, H, W) in [0, 1]."""
    from torchvision.utils import make_grid, save_image

    nrow = nrow or max(1, int(len(images) ** 0.5))
    grid = make_grid((quantize(images).cpu() + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid


class DDPM(BaseMethod):
    def __init__(self, unet: dict, in_chans: int, image_size: int, num_classes: int, optimizer, scheduler=None,
                 scheduler_interval: str = "epoch", diffusion: dict | None = None, ema: dict | None = None,
                 grad_clip: float | None = 1.0, sampling: dict | None = None, grid: dict | None = None,
                 evaluation: dict | None = None, sample_only: bool = False, num_samples: int = 1000, seed: int = 0):
        super().__init__(optimizer, scheduler, scheduler_interval)
        # plain values only, so checkpoints load with torch.load(weights_only=True) (train=false ckpt_path=...)
        self.save_hyperparameters(logger=False)
        self.unet = UNet(in_chans=in_chans, image_size=image_size, **unet)
        self.ema = frozen_copy(self.unet)  # the EMA holds only the network: the schedule lives in `diffusion`
        self.diffusion = GaussianDiffusion(**(diffusion or {}))
        self.ema_cfg = {"decay": 0.9995, "warmup_steps": 5000, **(ema or {})}
        self.grad_clip = grad_clip
        self.sampling = {"method": "ddim", "ddim_steps": 50, "eta": 0.0, "spacing": "linear", "batch_size": 500,
                         **(sampling or {})}
        ddim_timesteps(self.diffusion.timesteps, self.sampling["ddim_steps"], self.sampling["spacing"])  # checks both
        self.grid = {"num_images": 64, "every_n_epochs": 5, **(grid or {})}
        self.evaluation = {"num_samples": 500, "samplers": ["ddim"], "classifier": {}, "cache_dir": "outputs/fid_classifiers",
                           **(evaluation or {})}
        for name in [self.sampling["method"], *self.evaluation["samplers"]]:
            if name not in SAMPLERS:
                raise ConfigError(f"sampler {name!r} (model.sampling.method / model.evaluation.samplers); choices: {list(SAMPLERS)}")
        self.sample_only, self.num_samples, self.seed = sample_only, num_samples, seed
        self.shape = (in_chans, image_size, image_size)
        self.num_classes = num_classes
        self._test_images: list[torch.Tensor] = []

    # -- training (Algorithm 1) --------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.sample_only:
            raise ConfigError("model.sample_only=true only samples from a trained checkpoint: add train=false "
                              "ckpt_path=PATH (or drop model.sample_only to train)")

    def training_step(self, batch, batch_idx):
        x, _ = batch
        loss = self.diffusion.training_loss(self.unet, x)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return self.check_finite(loss)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """trainer.gradient_clip_val wins when set; otherwise clip the global norm at model.grad_clip."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        momentum = warmup_momentum(self.global_step, self.ema_cfg["decay"], self.ema_cfg["warmup_steps"])
        ema_update(self.ema, self.unet, momentum)
        self.log("train/ema_decay", momentum, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        generator = torch.Generator(x.device).manual_seed(batch_idx)  # the same t and noise every epoch
        loss = self.diffusion.training_loss(self.ema, x, generator=generator)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        every = self.grid["every_n_epochs"]
        max_steps = self.trainer.max_steps
        last = self.current_epoch + 1 == self.trainer.max_epochs or (max_steps > 0 and self.global_step >= max_steps)
        if every and ((self.current_epoch + 1) % every == 0 or last) and self.trainer.is_global_zero:
            images = self.generate(self.grid["num_images"], seed=self.seed)  # fixed noise: same seed every time
            grid = save_grid(images, self.run_dir / "samples" / f"epoch_{self.current_epoch + 1:03d}.png")
            log_image(self, "samples/ema", grid)  # plots/samples_ema.png (the latest) and the image loggers

    # -- sampling -----------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) if self._trainer is not None else Path(".")

    @torch.no_grad()
    def generate(self, n: int, method: str | None = None, seed: int = 0) -> torch.Tensor:
        """n samples from the EMA model, x_T drawn from a generator seeded with `seed`; [-1, 1] floats (CPU)."""
        method = method or self.sampling["method"]
        generator = torch.Generator(self.device).manual_seed(seed)
        out = []
        with eval_mode(self.ema):
            for start in range(0, n, self.sampling["batch_size"]):
                m = min(self.sampling["batch_size"], n - start)
                x_T = torch.randn((m, *self.shape), device=self.device, generator=generator)
                if method == "ancestral":
                    x = self.diffusion.sample(self.ema, x_T, generator=generator)
                else:
                    x = self.diffusion.ddim_sample(self.ema, x_T, self.sampling["ddim_steps"], self.sampling["eta"],
                                                   generator, self.sampling["spacing"])
                out.append(x.clamp(-1, 1).cpu())
        return torch.cat(out)

    # -- test: samples and FID -------------------------------------------------------------------------

    def on_test_epoch_start(self) -> None:
        self._test_images = []

    def test_step(self, batch, batch_idx):
        x, _ = batch
        generator = torch.Generator(x.device).manual_seed(batch_idx)
        self.log("test/loss", self.diffusion.training_loss(self.ema, x, generator=generator), on_epoch=True,
                 sync_dist=True, batch_size=len(x))
        self._test_images.append(x.detach())

    def on_test_epoch_end(self) -> None:
        if self.sample_only:
            self._write_samples()
            return
        real = torch.cat(self._test_images)
        if self.trainer.world_size > 1:  # every rank scores on the whole test set
            real = self.all_gather(real).flatten(0, 1)
        if self.trainer.is_global_zero:  # sampling and scoring once; the metrics are logged from rank 0
            for name, value in self.evaluate(real.cpu()).items():
                self.log(f"test/{name}", value, rank_zero_only=True)

    def feature_classifier(self):
        dm = self.trainer.datamodule
        key = {"dataset": getattr(dm, "dataset_spec", None), "shape": list(self.shape),
               **{k: getattr(dm, k, None) for k in ("split_seed", "val_fraction", "test_fraction")}}
        return cached_classifier(self.evaluation["cache_dir"], key, dm.split("train"), dm.split("test"), self.shape[0],
                                 self.num_classes, **self.evaluation["classifier"])

    def evaluate(self, real: torch.Tensor) -> dict:
        """FID against the real test images, with two references through the same pipeline and of the same
        size: Gaussian noise (clamped like samples) and real train images.

        The headline sampler (first of `samplers`) draws `num_samples`; with more samplers, each is also scored
        on `compare_samples` images (the headline's first ones), so that the samplers compare at the same N."""
        classifier, meta = self.feature_classifier()
        classifier.to(self.device)
        samplers, n = self.evaluation["samplers"], self.evaluation["num_samples"]
        n_compare = min(self.evaluation.get("compare_samples") or n, n)
        real_feats, _ = classifier.embed(real)
        out = {"classifier_acc": meta["test_acc"]}
        report = {"num_samples": n, "compare_samples": n_compare, "num_real": len(real), "classifier": meta, "samplers": {}}
        for i, sampler in enumerate(samplers):
            count = n if i == 0 else n_compare
            started, cpu_started = time.perf_counter(), time.process_time()
            samples = self.generate(count, sampler, seed=self.seed + 1)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            feats, logits = classifier.embed(samples)
            hist = class_histogram(logits, self.num_classes)
            fid = frechet_distance(feats, real_feats)
            if i == 0:  # the headline sampler
                out.update(fid=fid, class_frac_min=float(hist.min()))
                headline_feats = feats
            if len(samplers) > 1:
                out[f"fid_{sampler}"] = fid if count == n_compare else frechet_distance(headline_feats[:n_compare], real_feats)
            out[f"sample_ms_{sampler}"] = 1000 * cpu_seconds / count  # CPU time per image (fair on a shared machine)
            report["samplers"][sampler] = {"num_samples": count, "fid": fid, "fid_at_compare_samples": out.get(f"fid_{sampler}"),
                                           "wall_s": seconds, "cpu_s": cpu_seconds, "class_fractions": hist.round(4).tolist()}
            save_grid(samples[:100], self.run_dir / "samples" / f"test_{sampler}.png", nrow=10)
        generator = torch.Generator().manual_seed(self.seed + 2)
        noise = torch.randn((n, *self.shape), generator=generator).clamp(-1, 1)
        out["fid_noise"] = frechet_distance(classifier.embed(noise)[0], real_feats)
        train = self.trainer.datamodule.split("train")
        idx = stratified_subset(train.labels, n, self.seed + 2).tolist()  # every class in its share
        reference = torch.stack([train[j][0] for j in idx])
        out["fid_real"] = frechet_distance(classifier.embed(reference)[0], real_feats)
        report.update({k: out[k] for k in ("fid", "fid_noise", "fid_real", "class_frac_min")})
        (self.run_dir / "fid.json").write_text(json.dumps(report, indent=2) + "\n")
        classifier.cpu()
        return out

    def _write_samples(self) -> None:
        if not self.trainer.is_global_zero:
            return
        started = time.perf_counter()
        samples = self.generate(self.num_samples, seed=self.seed + 1)
        uint8 = ((quantize(samples) + 1) * 127.5).round().to(torch.uint8).numpy()
        path = self.run_dir / "samples" / "samples.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=uint8)
        save_grid(samples[:100], self.run_dir / "samples" / "grid.png", nrow=10)
        self.log("test/sample_s", time.perf_counter() - started, rank_zero_only=True)
        log.info("wrote %d samples (%s, uint8 NCHW) to %s", len(uint8), self.sampling["method"], path)
