"""Source-free domain adaptation: what its methods share, and plain self-training as their baseline.

The run gets a trained source model, `model.source_model` (the encoder.pt of a run that trained a
classifier on the source, e.g. `model=supervised`), and unlabeled target images only
(`datamodules/unlabeled.py`: training batches are `(x, position)`, and the data config names one dataset,
the target, so no source image can be read). Adaptation trains the feature extractor; the classifier head,
SHOT's "hypothesis" of the source, stays frozen unless `model.freeze_head=false`. Target labels are read
only by the val / test evaluation (`val/acc`, `test/acc`); `val/im` is the information-maximisation score
of the target validation predictions (no label), which sweeps rank by.

`SelfTraining` (model=self_training): cross-entropy on the model's own confident predictions
(max p >= `threshold`), recomputed at every step: the pseudo-labeling baseline the seed names.
"""
from __future__ import annotations

import torch

from datamodules.errors import ConfigError

from .base import BaseMethod, ClassificationMetrics
from .components.distributed import gather_rows
from .components.encoder_io import load_classifier
from .components.modes import eval_mode
from .components.pseudo_labels import pseudo_label_loss
from .evaluation.validators import information_maximization

SOURCE_OPTION = "model.source_model"


class SourceFree(BaseMethod):
    def __init__(self, source_model: str | None, num_classes: int, in_chans: int, image_size: int, optimizer,
                 scheduler=None, scheduler_interval: str = "epoch", freeze_head: bool = True):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(logger=False)
        if not source_model:
            raise ConfigError(
                f"{SOURCE_OPTION} is required: source-free adaptation starts from a trained source model, the "
                f"encoder.pt of a run that trained a classifier on the source, e.g. `python run.py "
                f"model=supervised data=<source> hydra.run.dir=src`, then {SOURCE_OPTION}=src/encoder.pt")
        self.backbone, self.classifier = load_classifier(source_model, SOURCE_OPTION)
        if self.classifier.out_features != num_classes:
            raise ConfigError(f"{SOURCE_OPTION}={source_model} predicts {self.classifier.out_features} classes but "
                              f"the target data has {num_classes}; source and target must share the class list")
        self._check_input(source_model, in_chans, image_size)
        self.classifier.requires_grad_(not freeze_head)
        self.metrics = ClassificationMetrics(num_classes)
        self._val_probs: list[torch.Tensor] = []

    def _check_input(self, source_model: str, in_chans: int, image_size: int) -> None:
        try:
            with eval_mode(self.backbone), torch.no_grad():
                self.backbone(torch.zeros(2, in_chans, image_size, image_size))
        except RuntimeError as err:
            raise ConfigError(f"{SOURCE_OPTION}={source_model} does not take the target's {in_chans}x{image_size}x"
                              f"{image_size} images ({str(err).splitlines()[0]}); convert them with "
                              f"data.channels / data.image_size to the source model's input") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, positions = batch  # the target's training labels never reach this module
        losses = self.adaptation_losses(x, positions)
        self.log_train(losses, len(x))
        return self.check_finite(losses["train/loss"])

    def adaptation_losses(self, x: torch.Tensor, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- evaluation: labels of the target's val / test splits only ----------------------------------
    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.metrics.log_step(self, "val", logits, y)
        self._val_probs.append(logits.detach().float().softmax(1))

    def on_validation_epoch_end(self) -> None:
        if self._val_probs:
            probs = gather_rows(torch.cat(self._val_probs))
            self.log("val/im", information_maximization(probs), sync_dist=False)
        self._val_probs = []

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.metrics.log_step(self, "test", self(x), y)

    # ---- the whole target training split in order, as (features, probabilities) -------------------
    @torch.no_grad()
    def target_predictions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, softmax, positions) of every target training image, all processes' shards gathered
        (each process reads every world-th image), sorted by position."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        feats, probs, positions = [], [], []
        with eval_mode(self):
            for x, pos in self.trainer.datamodule.unlabeled_loader(rank, world):
                f = self.backbone(x.to(self.device)).float()
                feats.append(f)
                probs.append(self.classifier(f.to(self.classifier.weight.dtype)).float().softmax(1))
                positions.append(pos.to(self.device))
        feats, probs, positions = (gather_rows(torch.cat(t)) for t in (feats, probs, positions))
        order = positions.argsort()
        return feats[order], probs[order], positions[order]


class SelfTraining(SourceFree):
    def __init__(self, *args, threshold: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"model.threshold={threshold} must lie in [0, 1)")
        self.threshold = threshold

    def adaptation_losses(self, x, positions):
        loss, _, accepted = pseudo_label_loss(self(x), self.threshold)
        return {"train/loss": loss, "train/mask_rate": accepted.float().mean()}
