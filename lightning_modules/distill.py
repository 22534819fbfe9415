"""Knowledge distillation: a small student learns from a frozen teacher's soft targets.

Loss (Hinton et al. 2015):   alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y),
optionally plus `hint.weight` * FitNets' hint loss (Romero et al. 2015, Eq. 3): a learned regressor
maps the student's guided feature map to the teacher's hint feature map; and plus
`relation.distance` * RKD-D + `relation.angle` * RKD-A (Park et al. 2019) between the student's and the
teacher's embeddings (the features before each classifier): the three kinds of distilled knowledge,
response-, feature- and relation-based.

Teacher (`teacher`), frozen and always in eval mode:
- `checkpoint`: an `encoder.pt` written by a run that trained a classifier (it stores the head), or
  a Lightning `.ckpt` of a supervised / finetune / distill run; architecture read from the file;
- `name` + `pretrained: true` (timm, online) or `pretrained_file` (local): a timm classifier
  whose own head must have the data's number of classes; its input normalisation follows its
  `pretrained_cfg` like any pretrained backbone's.
Student: `backbone` (any timm name / ours) with a new linear head; exported as `encoder.pt`.

Transfer set: the labeled images (`LabeledDataModule`, default), or with
`model.datamodule._target_=datamodules.semisup.SemiSupervisedDataModule` also the unlabeled rest
of the training split: the soft term then covers both, the cross-entropy the labeled part only.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError

from .base import ClassificationMetrics
from .components.backbones import check_backbone_name
from .components.distillation import hint_loss, kd_loss, rkd_angle_loss, rkd_distance_loss
from .components.encoder_io import load_classifier, pretrained_file_errors, pretrained_overlay
from .components.modes import eval_mode
from .components.pretrained import attach_input_norm, normalization_for
from .components.stages import stage_output_modules
from .supervised import Supervised


class Teacher(nn.Module):
    """`backbone` (images -> embedding) followed by `classifier` (embedding -> logits)."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def teacher_from_checkpoint(path: str, name: str | None = None) -> Teacher:
    return Teacher(*load_classifier(path, "model.teacher.checkpoint", name))


def teacher_from_timm(name: str, in_chans: int, pretrained: bool, pretrained_file: str | None) -> Teacher:
    check_backbone_name(name, "model.teacher.name")
    if not (pretrained or pretrained_file):
        raise ConfigError(
            f"model.teacher.name={name} without weights would be an untrained teacher; set "
            f"model.teacher.checkpoint=PATH, model.teacher.pretrained=true or model.teacher.pretrained_file=FILE"
        )
    option = "model.teacher.pretrained_file"
    with pretrained_file_errors(pretrained_file, option):
        net = timm.create_model(name, pretrained=True, in_chans=in_chans,
                                pretrained_cfg_overlay=pretrained_overlay(pretrained_file, option))
    attach_input_norm(net, normalization_for(net, "timm", in_chans))
    classifier = net.get_classifier()
    net.reset_classifier(0)  # net now ends at the embedding; its trained head is kept as `classifier`
    return Teacher(net, classifier)


def _output_of(module: nn.Module, name: str, option: str) -> dict:
    """Register a forward hook that stores `module.<name>`'s output under key "out"."""
    modules = dict(module.named_modules())
    if name not in modules:
        raise ConfigError(f"{option}={name!r} is not a module of the network; e.g. {list(modules)[1:12]}")
    store: dict = {}
    modules[name].register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    return store


def hint_regressor(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """FitNets' regressor r: a 1x1 convolution for feature maps, a linear map for vectors."""
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    raise ConfigError(
        f"model.hint: the guided layer gives shape {tuple(student_shape)} and the hint layer "
        f"{tuple(teacher_shape)}; both must be feature maps (N,C,H,W) or both vectors (N,D)"
    )


def transfer_set(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the transfer set and the labels of its first rows. `(x, y)`: labeled images only;
    `{"labeled": (x, y), "unlabeled": x_u}` (SemiSupervisedDataModule): the teacher's soft targets
    also cover the unlabeled images, Hinton et al.'s transfer set (Sec. 3)."""
    if isinstance(batch, dict):
        (x, y), x_u = batch["labeled"], batch["unlabeled"]
        return torch.cat([x, x_u]), y
    return batch


class Distill(Supervised):
    def __init__(self, backbone: dict, teacher: dict, num_classes: int, in_chans: int, image_size: int,
                 optimizer, scheduler=None, scheduler_interval: str = "epoch", temperature: float = 4.0,
                 alpha: float = 0.9, hint: dict | None = None, relation: dict | None = None):
        if not temperature > 0:
            raise ConfigError(f"model.temperature={temperature} must be > 0")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"model.alpha={alpha} must lie in [0, 1] (weight of the soft-target term)")
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, scheduler_interval)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.teacher = self._build_teacher(dict(teacher), num_classes, in_chans, image_size)
        self.teacher.requires_grad_(False).eval()
        self.teacher_metrics = ClassificationMetrics(num_classes)
        hint = dict(hint or {})
        self.hint_weight = float(hint.get("weight") or 0.0)
        if self.hint_weight > 0:
            self._setup_hint(hint, in_chans, image_size)
        relation = dict(relation or {})
        self.distance_weight = float(relation.get("distance") or 0.0)
        self.angle_weight = float(relation.get("angle") or 0.0)

    def _build_teacher(self, cfg: dict, num_classes: int, in_chans: int, image_size: int) -> Teacher:
        if cfg.get("checkpoint"):
            teacher = teacher_from_checkpoint(cfg["checkpoint"], cfg.get("name"))
            where = f"model.teacher.checkpoint={cfg['checkpoint']}"
        elif cfg.get("name"):
            teacher = teacher_from_timm(cfg["name"], in_chans, cfg.get("pretrained", False), cfg.get("pretrained_file"))
            where = f"model.teacher.name={cfg['name']}"
        else:
            raise ConfigError("model=distill needs a teacher: model.teacher.checkpoint=PATH (encoder.pt or .ckpt "
                              "of a classifier run) or model.teacher.name=<timm name> with pretrained weights")
        teacher.eval()
        try:
            with torch.no_grad():
                out = teacher(torch.zeros(2, in_chans, image_size, image_size))
        except RuntimeError as err:
            raise ConfigError(f"{where}: the teacher cannot take this data's {in_chans}x{image_size}x{image_size} "
                              f"images ({str(err).splitlines()[0]}); set model.input.channels / image_size") from err
        if out.shape[-1] != num_classes:
            raise ConfigError(f"{where}: the teacher predicts {out.shape[-1]} classes but the data has {num_classes}")
        return teacher

    def _setup_hint(self, hint: dict, in_chans: int, image_size: int) -> None:
        """Hooks on the guided (student) and hint (teacher) layers, default: the middle stage of each."""
        def middle_stage(net):
            names = stage_output_modules(net)
            return names[(len(names) - 1) // 2]

        student_layer = hint.get("student_layer") or middle_stage(self.backbone)
        teacher_layer = hint.get("teacher_layer") or middle_stage(self.teacher.backbone)
        self._guided = _output_of(self.backbone, student_layer, "model.hint.student_layer")
        self._hinted = _output_of(self.teacher.backbone, teacher_layer, "model.hint.teacher_layer")
        with eval_mode(self.backbone), torch.no_grad():
            x = torch.zeros(2, in_chans, image_size, image_size)
            self.backbone(x), self.teacher(x)
        self.regressor = hint_regressor(self._guided["out"].shape, self._hinted["out"].shape)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen teacher: no dropout, BatchNorm statistics fixed
        return self

    def hint_term(self) -> torch.Tensor:
        guided, target = self.regressor(self._guided["out"]), self._hinted["out"]
        if guided.ndim == 4 and guided.shape[-2:] != target.shape[-2:]:
            guided = F.interpolate(guided, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return hint_loss(guided, target)

    def relation_terms(self, student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> dict:
        """RKD's weighted terms (Park et al. 2019, Eq. 8 without the task loss), those switched on."""
        terms = {}
        if self.distance_weight > 0:
            terms["rkd_distance"] = self.distance_weight * rkd_distance_loss(student_embedding, teacher_embedding)
        if self.angle_weight > 0:
            terms["rkd_angle"] = self.angle_weight * rkd_angle_loss(student_embedding, teacher_embedding)
        return terms

    def training_step(self, batch, batch_idx):
        x, y = transfer_set(batch)
        student_embedding = self.backbone(x)
        student_logits = self.classifier(student_embedding)
        with torch.no_grad():
            teacher_embedding = self.teacher.backbone(x)
            teacher_logits = self.teacher.classifier(teacher_embedding)
        self.metrics.log_step(self, "train", student_logits[: len(y)], y)  # train/loss = the student's CE
        loss = kd_loss(student_logits, teacher_logits, y, self.temperature, self.alpha)
        self.log("train/kd_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        extra = self.relation_terms(student_embedding, teacher_embedding)
        if self.hint_weight > 0:
            extra["hint_loss"] = self.hint_weight * self.hint_term()
        for name, term in extra.items():
            self.log(f"train/{name}", term, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + term
        self.log("train/total_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return self.check_finite(loss, "train/total_loss")

    def _evaluate(self, stage: str, batch) -> None:
        x, y = batch
        self.metrics.log_step(self, stage, self(x), y)
        self.teacher_metrics.log_step(self, stage, self.teacher(x), y, prefix="teacher_")

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)
