"""Per-part learning rates: a new head at the optimizer's lr, a pretrained backbone at a fraction of it.

Fine-tuning a pretrained backbone at the lr that suits a freshly initialised head overwrites the
pretrained features in the first steps (catastrophic forgetting); the usual remedy is a smaller lr for
the backbone (e.g. 0.1x, as in Transfer-Learning-Library's fine-tuning recipes).
"""
from __future__ import annotations

import inspect

from torch import nn

from datamodules.errors import ConfigError


def base_learning_rate(optimizer_factory) -> float:
    """The `lr` of the optimizer partial, or the optimizer's default."""
    if "lr" in getattr(optimizer_factory, "keywords", {}):
        return float(optimizer_factory.keywords["lr"])
    default = inspect.signature(optimizer_factory.func).parameters["lr"].default
    return float(default)


def head_and_backbone_groups(head: nn.Module, backbone: nn.Module, optimizer_factory, backbone_lr_mult: float) -> list[dict]:
    """Optimizer parameter groups: the head's trainable parameters at lr, the backbone's at lr x backbone_lr_mult."""
    lr = base_learning_rate(optimizer_factory)
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": lr}]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": lr * backbone_lr_mult})
    return groups


def backbone_and_rest_groups(model: nn.Module, backbone: nn.Module, optimizer_factory,
                             backbone_lr_mult: float) -> list[dict] | list[nn.Parameter]:
    """The backbone's trainable parameters at lr x backbone_lr_mult, every other trainable parameter of
    `model` (heads, domain classifiers, decoders) at lr; one plain list when the multiplier is 1."""
    if backbone_lr_mult == 1.0:
        return [p for p in model.parameters() if p.requires_grad]
    lr = base_learning_rate(optimizer_factory)
    in_backbone = {id(p) for p in backbone.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    tuned = [p for p in backbone.parameters() if p.requires_grad]
    return [group for group in ({"params": rest, "lr": lr}, {"params": tuned, "lr": lr * backbone_lr_mult})
            if group["params"]]


def backbone_lr_multiplier(value: float | None, backbone: dict) -> float:
    """`model.backbone_lr_mult`; null: 0.1 for a backbone that starts from pretrained weights, 1 from scratch."""
    if value is None:
        value = 0.1 if starts_pretrained(backbone) else 1.0
    if not value > 0:
        raise ConfigError(f"model.backbone_lr_mult={value} must be > 0 (null: 0.1 for a pretrained backbone, "
                          f"1 from scratch)")
    return float(value)


def starts_pretrained(backbone: dict) -> bool:
    """Whether a backbone config loads weights (timm's, a local file, or another run's encoder)."""
    return bool(backbone.get("pretrained") or backbone.get("pretrained_file") or backbone.get("checkpoint"))
