"""Encoder hand-off between runs: `encoder.pt` out, `model.backbone.checkpoint=PATH` in.

`encoder.pt` holds `{"format": "transferlab-encoder", "name": timm name, "spec": backbone
options (in_chans, ...), "input": {"channels", "image_size"}, "state_dict": backbone weights}`.
A Lightning `.ckpt` of this project is accepted too: its weights under `backbone.` are taken.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datamodules.errors import ConfigError

ENCODER_FORMAT = "transferlab-encoder"


def save_encoder(backbone: nn.Module, path, input_spec: dict | None = None) -> Path:
    spec = dict(getattr(backbone, "backbone_spec", {}))
    payload = {
        "format": ENCODER_FORMAT,
        "name": spec.pop("name", type(backbone).__name__),
        "spec": spec,
        "input": dict(input_spec or {}),
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
    }
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_backbone_state(path) -> tuple[dict, dict]:
    """(state_dict, meta) from encoder.pt, a Lightning .ckpt, or a bare state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.backbone.checkpoint={path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip archives, wrong file types
        raise ConfigError(f"model.backbone.checkpoint={path}: cannot be read as a torch checkpoint ({err})") from err
    if isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT:
        return obj["state_dict"], {"name": obj.get("name"), **obj.get("spec", {})}
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise ConfigError(f"model.backbone.checkpoint={path}: Lightning checkpoint has no 'backbone.*' weights")
        return state, {}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ConfigError(f"model.backbone.checkpoint={path}: not an encoder.pt, a Lightning .ckpt or a state dict")


def load_backbone_weights(model: nn.Module, path) -> None:
    """Load weights strictly; on mismatch say which names and shapes differ."""
    state, meta = read_backbone_state(path)
    expected_name = getattr(model, "backbone_spec", {}).get("name")
    if meta.get("name") and expected_name and meta["name"] != expected_name:
        raise ConfigError(
            f"model.backbone.checkpoint={path} holds a '{meta['name']}' encoder but "
            f"model.backbone.name={expected_name!r}; set model.backbone.name={meta['name']}"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(
            f"model.backbone.checkpoint={path} does not fit the backbone: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state)
