"""The thin base every method shares: optimizer/scheduler from plain configs, a finite-loss guard,
and classification metrics for methods whose headline is `*/acc`."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ConfigError

from .components.schedules import progress


class NonFiniteLossError(FloatingPointError):
    pass


def optimizer_factory(spec: Any, option: str = "model.optimizer") -> Callable | None:
    """A `functools.partial` building an optimizer (or scheduler) from `spec`: a `{_target_: class, **options}`
    config (what the runner passes: plain, never instantiated, so hyperparameters stay loadable with
    `torch.load(weights_only=True)`), a `functools.partial` (programmatic use) or None. Options set to null
    are dropped, so a preset can remove one (SGD's `momentum: null` when it switches to Adam)."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        cfg = {k: v for k, v in spec.items() if v is not None and k != "_partial_"}
        if "_target_" not in cfg:
            raise ConfigError(f"{option} needs a _target_ (e.g. {option}._target_=torch.optim.Adam); got keys {sorted(cfg)}")
        from hydra.utils import instantiate

        try:
            spec = instantiate(cfg, _partial_=True, _convert_="all")
        except Exception as err:
            raise ConfigError(f"{option}._target_={cfg['_target_']}: {str(err).splitlines()[0]}") from None
    if isinstance(spec, functools.partial):
        return functools.partial(spec.func, *spec.args, **{k: v for k, v in spec.keywords.items() if v is not None})
    if callable(spec):
        return spec
    raise ConfigError(f"{option}={spec!r}: give a config with a _target_ (e.g. torch.optim.Adam) or null")


def plain_config(value: Any) -> Any:
    """A `functools.partial` as the `{_target_, **options}` config that builds it (other values as they are)."""
    if isinstance(value, functools.partial):
        return {"_target_": f"{value.func.__module__}.{value.func.__qualname__}",
                **{k: plain_config(v) for k, v in value.keywords.items()}}
    return value


class BaseMethod(pl.LightningModule):
    """`optimizer` and `scheduler`: `{_target_: class, **options}` configs or partials (see `optimizer_factory`);
    `params` (and `optimizer`, `total_steps` for schedulers that take them) are filled in here."""

    def __init__(self, optimizer: Any, scheduler: Any = None, scheduler_interval: str = "epoch"):
        super().__init__()
        self.optimizer_factory = optimizer_factory(optimizer, "model.optimizer")
        self.scheduler_factory = optimizer_factory(scheduler, "model.scheduler")
        self.scheduler_interval = scheduler_interval
        self.compile_options: dict | None = None  # speed switches, set by run.py from model.compile /
        self.use_channels_last = False              # model.channels_last (see `speed_options`)
        self._nets_compiled = False
        self._epoch_sums: dict[str, list] = {}  # log_train: name -> [sum of value x batch size, count, on_step, prog_bar]

    # ---- speed switches (model.compile, model.channels_last) ------------------------------------
    def speed_options(self, compile: bool | dict = False, channels_last: bool = False) -> None:
        """`compile`: false, true, or torch.compile keyword arguments (e.g. {mode: max-autotune});
        `channels_last`: NHWC weights, so convolutions run (and produce activations) channels-last."""
        if not isinstance(compile, (bool, dict)):
            raise ConfigError(f"model.compile={compile!r}: use true, false, or a dict of torch.compile options "
                              f"(e.g. model.compile={{mode: reduce-overhead}})")
        self.compile_options = (dict(compile) if isinstance(compile, dict) else {}) if compile else None
        self.use_channels_last = bool(channels_last)

    def compiled_children(self) -> list[str]:
        """The networks torch.compile wraps: every direct child that holds parameters, but not metrics."""
        from torchmetrics import Metric

        return [name for name, child in self.named_children()
                if any(True for _ in child.parameters()) and not any(isinstance(m, Metric) for m in child.modules())]

    def configure_model(self) -> None:
        """Lightning hook (before the optimizers are built): apply the speed switches once. `nn.Module.compile`
        compiles in place, so parameter names, checkpoints and encoder.pt stay as without it."""
        if self.use_channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_options is not None and not self._nets_compiled:
            for name in self.compiled_children():
                getattr(self, name).compile(**self.compile_options)
            self._nets_compiled = True

    # ---- run progress: every schedule is a fraction of the run, never an absolute epoch count ----
    @property
    def total_batches(self) -> int:
        """Training batches in the whole run (trainer.max_epochs x batches per epoch, or max_steps)."""
        trainer = self.trainer
        total = float("inf")
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            total = trainer.max_epochs * trainer.num_training_batches
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        if total == float("inf"):
            raise ConfigError("this method's schedules follow the run's progress: set trainer.max_epochs or trainer.max_steps")
        return int(total)

    @property
    def progress(self) -> float:
        """p in [0, 1]: training batches done / the run's total batches."""
        done = self.trainer.fit_loop.epoch_loop.total_batch_idx
        return progress(done, max(self.total_batches - 1, 1))

    def parameter_groups(self):
        """What the optimizer trains; methods with frozen parts or per-part learning rates override."""
        return [p for p in self.parameters() if p.requires_grad]

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, with optimizer/scheduler partials (programmatic use) saved as their plain configs,
        so every checkpoint loads with `torch.load(weights_only=True)`."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        for hparams in (self._hparams, getattr(self, "_hparams_initial", {})):
            for key, value in list(hparams.items()):
                hparams[key] = plain_config(value)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        factory = getattr(self.scheduler_factory, "func", self.scheduler_factory)  # a partial's class
        extra = {}
        if "total_steps" in inspect.signature(factory).parameters:  # progress schedules (schedules.ProgressLR)
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def check_finite(self, loss: torch.Tensor, name: str = "train/loss") -> torch.Tensor:
        """Stop at once, naming the step, instead of training on NaN/inf."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"{name} is {loss.detach().float().item()} at epoch {self.current_epoch}, global step "
                f"{self.global_step}; lower the learning rate, use amp=fp32, or enable gradient clipping "
                f"(trainer.gradient_clip_val)"
            )
        return loss

    # ---- cheap training scalars ---------------------------------------------------------------------
    def log_train(self, values: dict[str, torch.Tensor | float], batch_size: int, on_step: bool = False,
                  prog_bar: bool = False) -> None:
        """Training scalars without a `self.log` call per value and step: Lightning's bookkeeping costs
        ~0.3-0.5 ms per call on a CPU, a visible share of a small step. Epoch means (weighted by batch size)
        accumulate here and are logged once per epoch as `<name>` (`<name>_epoch` with `on_step`, as
        Lightning names them); with `on_step` the value also goes out as `<name>_step`, only on the steps
        the loggers write (`trainer.log_every_n_steps`)."""
        for name, value in values.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            entry = self._epoch_sums.setdefault(name, [0.0, 0, on_step, prog_bar])
            entry[0] = entry[0] + value * batch_size
            entry[1] += batch_size
        if on_step and self._loggers_write_this_step():
            self.log_dict({f"{name}_step": v for name, v in values.items()}, on_step=True, on_epoch=False)

    def _loggers_write_this_step(self) -> bool:
        # the same test Lightning's logger connector applies to on_step values (every log_every_n_steps)
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def on_train_epoch_end(self) -> None:
        """The epoch means of `log_train` (averaged over processes under DDP, which see equal batches)."""
        for name, (total, count, on_step, prog_bar) in self._epoch_sums.items():
            mean = total / max(count, 1)
            mean = mean.to(self.device) if torch.is_tensor(mean) else torch.tensor(mean, device=self.device)
            self.log(f"{name}_epoch" if on_step else name, mean, sync_dist=True, prog_bar=prog_bar)
        self._epoch_sums = {}


class ClassificationMetrics(torch.nn.Module):
    """Accuracy per stage with torchmetrics, so it is exact under DDP (states are summed)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.acc = torch.nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val", "test")}
        )

    def log_step(self, module: pl.LightningModule, stage: str, logits: torch.Tensor, y: torch.Tensor,
                 prefix: str = "") -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), y)
        metric = self.acc[f"{stage}_acc"]
        metric.update(logits.detach(), y)  # logged per epoch only: no per-batch compute (forward) needed
        on_step = stage == "train"
        module.log(f"{stage}/{prefix}loss", loss, on_step=on_step, on_epoch=True, sync_dist=not on_step,
                   prog_bar=stage != "test", batch_size=len(y))
        module.log(f"{stage}/{prefix}acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss
