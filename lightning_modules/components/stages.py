"""A backbone's stages, from input to output: what partial fine-tuning and frozen-stage adaptation train or freeze.

Stages are timm's coarse parameter groups (`model.group_matcher(coarse=True)`: the stem, then each stage /
block, e.g. ResNet `conv1+bn1, layer1..layer4`; ours: `lenet` stages.0, stages.1, fc; `small_cnn`
stages.0..2). A model without a group matcher falls back to its top-level children that hold parameters,
in registration order. A `BottleneckEncoder` (trunk + new bottleneck layer) has the trunk's stages, then
the bottleneck as the last one.
"""
from __future__ import annotations

from timm.models import group_parameters
from torch import nn

from .bottleneck import BottleneckEncoder


def backbone_stages(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone, grouped into stages from input to output."""
    if isinstance(backbone, BottleneckEncoder):
        trunk = [[f"trunk.{name}" for name in names] for names in backbone_stages(backbone.trunk)]
        return trunk + [[f"bottleneck.{name}" for name, _ in backbone.bottleneck.named_parameters()]]
    if hasattr(backbone, "group_matcher"):
        groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
        return [names for _, names in sorted(groups.items())]
    stages = []
    for child_name, child in backbone.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if names:
            stages.append(names)
    return stages


def stage_output_modules(backbone: nn.Module) -> list[str]:
    """For each stage, the name of the largest module holding only that stage's parameters
    (whose output is the stage's feature map); when none exists (e.g. a stem of several layers),
    the last module that holds one of its parameters."""
    stages = backbone_stages(backbone)
    stage_of = {name: i for i, names in enumerate(stages) for name in names}
    names = []
    for i, params in enumerate(stages):
        owners = [p.rpartition(".")[0] for p in params]
        best = owners[-1]
        for module_name, module in backbone.named_modules():
            own = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()]
            if own and all(stage_of.get(n) == i for n in own) and len(own) == len(params):
                best = module_name
                break
        names.append(best)
    return names


def frozen_norm_layers(module: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose parameters are all frozen: their running statistics must stay too."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters(recurse=False))
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def hold_frozen_parts_in_eval(module: nn.Module) -> None:
    """After `module.train()`: frozen BatchNorm layers keep their statistics, and a frozen trunk under a
    bottleneck stays in eval mode altogether (dropout too: what its cached features saw)."""
    for layer in frozen_norm_layers(module):
        layer.eval()
    for encoder in module.modules():
        if isinstance(encoder, BottleneckEncoder) and encoder.trunk_frozen:
            encoder.trunk.eval()


def train_last_stages(backbone: nn.Module, stages: list[list[str]], n: int) -> None:
    """Freeze every backbone parameter outside its last `n` stages (`backbone_stages`)."""
    trainable = {name for names in stages[len(stages) - n:] for name in names}
    for name, param in backbone.named_parameters():
        param.requires_grad_(name in trainable)


def stage_starts(stages: list[list[str]]) -> list[str]:
    """The first module of each stage, for messages."""
    return [names[0].rsplit(".", 1)[0] for names in stages]
