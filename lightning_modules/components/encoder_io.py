"""Encoder hand-off between runs: `encoder.pt` out, `model.backbone.checkpoint=PATH` in.

`encoder.pt` holds `{"format": "transferlab-encoder", "name": timm name, "spec": backbone
options (in_chans, ...), "input": {"num_classes", "in_chans", "image_size"}, "state_dict":
backbone weights}` and, when the run trained a classifier on top, `"head": {"weight", "bias"}`
(so a whole classifier, e.g. a distillation teacher, can be rebuilt from it).
A Lightning `.ckpt` of this project is accepted too: its weights under `backbone.` (and
`classifier.`) are taken, and the backbone name comes from its saved hyper-parameters.

Every file is read through `safe_load.safe_load` (`torch.load(weights_only=True)`): a file holding
Python objects is refused before anything in it runs.
"""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch
from torch import nn

from datamodules.errors import ConfigError

from .safe_load import safe_load, state_mismatch

ENCODER_FORMAT = "transferlab-encoder"
# Backbone options of a .ckpt's hyper-parameters that are load-time switches, not architecture.
_LOAD_OPTIONS = ("name", "pretrained", "pretrained_file", "checkpoint")


def save_encoder(backbone: nn.Module, path, input_spec: dict | None = None, head: nn.Module | None = None) -> Path:
    """Write `encoder.pt` atomically; `head` (an `nn.Linear` on the features) is stored when given."""
    spec = dict(getattr(backbone, "backbone_spec", {}))
    payload = {
        "format": ENCODER_FORMAT,
        "name": spec.pop("name", type(backbone).__name__),
        "spec": spec,
        # What the weights expect of the input (`pretrained.InputNorm`), beside the data they were trained on.
        "input": {**(input_spec or {}), **({"normalization": backbone.input_normalization}
                                           if hasattr(backbone, "input_normalization") else {})},
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
    }
    if isinstance(head, nn.Linear):
        payload["head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint_file(path, option: str = "model.backbone.checkpoint"):
    """The file behind `option` (safe_load: weights_only=True; a clear `ConfigError` naming both otherwise)."""
    return safe_load(path, f"{option}={Path(path).expanduser()}")


def read_weights_file(path, option: str) -> dict:
    """The weights of a local file as timm's `load_state_dict` takes them (EMA weights first, then
    `state_dict` / `model`, wrapper prefixes removed), read through safe_load."""
    from timm.models._helpers import clean_state_dict

    obj = load_checkpoint_file(path, option)
    if isinstance(obj, dict):
        key = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model") if isinstance(obj.get(k), dict)), None)
        obj = obj[key] if key else obj
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ConfigError(f"{option}={path}: holds no state dict of tensors (a weights file such as timm's .pth / "
                          f".safetensors is expected)")
    return clean_state_dict(obj)


def _prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_checkpoint(path, option: str = "model.backbone.checkpoint") -> dict:
    """Everything a checkpoint says about a backbone (and classifier head) in one form.

    Returns `{"state_dict": backbone weights, "head": head weights or None, "name": timm name or
    None, "spec": architecture options (in_chans, widths, ...), "input": data it was trained on}`.
    """
    obj = load_checkpoint_file(path, option)
    if isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT:
        return {"state_dict": obj["state_dict"], "head": obj.get("head"), "name": obj.get("name"),
                "spec": dict(obj.get("spec", {})), "input": dict(obj.get("input", {}))}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # Lightning checkpoint
        state = _prefixed(obj["state_dict"], "backbone.")
        if not state:
            raise ConfigError(f"{option}={path}: Lightning checkpoint has no 'backbone.*' weights")
        hparams = obj.get("hyper_parameters") or {}
        backbone = dict(hparams.get("backbone") or {})
        spec = {k: v for k, v in backbone.items() if k not in _LOAD_OPTIONS}
        if "in_chans" in hparams:
            spec["in_chans"] = hparams["in_chans"]
        head = _prefixed(obj["state_dict"], "classifier.") or None
        return {"state_dict": state, "head": head, "name": backbone.get("name"), "spec": spec,
                "input": {k: hparams[k] for k in ("num_classes", "in_chans", "image_size") if k in hparams}}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj, "head": None, "name": None, "spec": {}, "input": {}}
    raise ConfigError(f"{option}={path}: not an encoder.pt, a Lightning .ckpt or a state dict")


def read_backbone_state(path, option: str = "model.backbone.checkpoint") -> tuple[dict, dict]:
    """(state_dict, meta) from encoder.pt, a Lightning .ckpt, or a bare state dict."""
    ckpt = read_checkpoint(path, option)
    return ckpt["state_dict"], {"name": ckpt["name"], **ckpt["spec"], "input": ckpt["input"]}


def check_state_fits(model: nn.Module, state: dict, what: str) -> None:
    """Strict-load precheck: say how many names are missing/unexpected and which shapes differ."""
    # Files from before backbones had an `input_norm` lack its buffers; it then stays the identity.
    own = {k: v for k, v in model.state_dict().items() if k in state or not k.startswith("input_norm.")}
    diff = state_mismatch(own, state)
    if diff:
        raise ConfigError(f"{what} does not fit the backbone: {diff}")


def load_backbone_weights(model: nn.Module, path, option: str = "model.backbone.checkpoint") -> dict:
    """Load weights strictly; on mismatch say which names and shapes differ. Returns the meta."""
    state, meta = read_backbone_state(path, option)
    expected_name = getattr(model, "backbone_spec", {}).get("name")
    if meta.get("name") and expected_name and meta["name"] != expected_name:
        raise ConfigError(
            f"{option}={path} holds a '{meta['name']}' encoder but "
            f"model.backbone.name={expected_name!r}; set model.backbone.name={meta['name']}"
        )
    trained_on = f" (it was trained on input {meta['input']})" if meta.get("input") else ""
    check_state_fits(model, state, f"{option}={path}{trained_on}")
    model.load_state_dict(state)
    return meta


def pretrained_overlay(pretrained_file, option: str = "model.backbone.pretrained_file") -> dict | None:
    """timm's `pretrained_cfg_overlay` for a local weights file, read through safe_load before timm reads
    it (timm's own read is weights_only too), so a refused or broken file gets our one-line error."""
    if not pretrained_file:
        return None
    path = Path(pretrained_file).expanduser()
    if path.suffix != ".npz":  # JAX .npz weights: timm reads them with numpy, allow_pickle=False
        read_weights_file(path, option)
    return {"file": str(path)}


def check_pretrained_file_fits(model: nn.Module, pretrained_file, option: str = "model.backbone.pretrained_file") -> dict | None:
    """timm loads a file into a feature extractor non-strictly (its classifier is dropped), so a file of
    another architecture would leave layers at random init: refuse any missing or foreign weight.
    Returns the file's state dict (its `input_norm.*` buffers, if any, are the caller's to load)."""
    if not pretrained_file or Path(pretrained_file).suffix == ".npz":
        return None
    state = read_weights_file(Path(pretrained_file).expanduser(), option)
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    skip = tuple(f"{h}." for h in heads) + ("input_norm.",)
    foreign = {k: v for k, v in state.items() if not k.startswith(skip)}
    check_state_fits(model, foreign, f"{option}={pretrained_file}")
    return state


@contextlib.contextmanager
def pretrained_file_errors(pretrained_file, option: str = "model.backbone.pretrained_file"):
    """Turn timm's errors on a bad local weights file into a `ConfigError` naming the option."""
    try:
        yield
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, OSError) as err:
        if not pretrained_file:
            raise
        raise ConfigError(
            f"{option}={pretrained_file}: timm could not load it into this "
            f"architecture ({str(err).splitlines()[0][:400]})"
        ) from err


def load_classifier(path, option: str, name: str | None = None) -> tuple[nn.Module, nn.Linear]:
    """(backbone, head) of a run that trained a classifier (its encoder.pt or .ckpt): a distillation teacher,
    the source model of source-free adaptation. `name`: the architecture the user expects, checked."""
    from .backbones import check_backbone_name, create_backbone

    ckpt = read_checkpoint(path, option)
    if ckpt["head"] is None:
        raise ConfigError(
            f"{option}={path} holds no classifier head (an encoder of a run that trained none); give the "
            f"encoder.pt or checkpoints/last.ckpt of a supervised / finetune / distill / source_only run"
        )
    arch = ckpt["name"] or name
    if arch is None:
        raise ConfigError(f"{option}={path} does not say its architecture; set its name option")
    if name and arch != name:
        raise ConfigError(f"{option}={path} holds a '{arch}' network but the name option says {name!r}")
    check_backbone_name(arch, option)
    backbone = create_backbone(name=arch, **ckpt["spec"])
    check_state_fits(backbone, ckpt["state_dict"], f"{option}={path}")
    backbone.load_state_dict(ckpt["state_dict"])
    out_features, in_features = ckpt["head"]["weight"].shape
    head = nn.Linear(in_features, out_features)
    head.load_state_dict(ckpt["head"])
    return backbone, head
