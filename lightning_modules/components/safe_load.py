"""The one way this project reads a torch file: `safe_load(path, option)`.

Every loader (resume checkpoints, `ckpt_path=last`, SLURM `hpc_ckpt_*.ckpt`, `model.backbone.checkpoint`,
`pretrained_file`, distillation teachers, DDPM sample-only, the FID classifier cache) goes through it:
`torch.load(path, map_location="cpu", weights_only=True)`, so a file that holds Python objects is refused
before anything in it runs. Every failure is a one-line `ConfigError` naming the option and the file; the
file itself is never touched (a refused file stays where it is).

`SafeCheckpointIO` routes Lightning's own loads (trainer.fit/test with a ckpt_path, the SLURM requeue
resume) through `safe_load`.
"""
from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import ConfigError
from runner.rundir import AtomicCheckpointIO

# Checkpoints written before hyperparameters became plain dicts pickle their optimizer/scheduler as
# Hydra partials; exactly these globals are allowed (they only rebuild a `functools.partial` of an
# optimizer or scheduler class, or a namespace of plain values; nothing is run). Anything else is refused.
_LEGACY_PARTIALS = ("functools.partial", "hydra._internal.target_policy._DeferredTarget",
                    "argparse.Namespace")  # the last: the `args` of timm's training checkpoints
_LEGACY_NUMPY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                 "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype")


def _legacy_global(name: str):
    """The object for an allowed legacy global name, or None when the name is not allowed."""
    if name in _LEGACY_PARTIALS or name in _LEGACY_NUMPY or name.startswith("numpy.dtypes."):
        pass
    elif not name.startswith(("torch.optim.", "lightning_modules.components.schedules.")):
        return None
    module, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if name.startswith(("torch.optim.", "lightning_modules.")):  # classes only: optimizers and LR schedules
        bases = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
        if not (isinstance(obj, type) and issubclass(obj, bases)):
            return None
    return obj


def _where(option: str, path: Path) -> str:
    """`option` when it already shows the path (`model.backbone.checkpoint=/x/a.pt`), else `option: path`."""
    return option if str(path) in option else f"{option}: {path}"


def _refused(where: str, names: list[str]) -> ConfigError:
    names = sorted(set(names))
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return ConfigError(
        f"{where}: refused, the file holds Python objects ({shown}) that torch.load(weights_only=True) does not "
        f"load; nothing in it was run and the file was left in place. Give a checkpoint written by this project "
        f"(checkpoints/last.ckpt, encoder.pt) or a plain state dict"
    )


def _unreadable(where: str, err: BaseException | None = None) -> ConfigError:
    first = str(err).splitlines()[0].split(". ")[0][:160] if err is not None and not isinstance(err, KeyError) else ""
    why = f" ({first})" if first else ""
    return ConfigError(f"{where}: not a readable PyTorch checkpoint (truncated or corrupt?){why}")


def safe_load(path, option: str) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`; `.safetensors` files with safetensors.

    `option` names where the path came from (`ckpt_path=last`, `model.backbone.checkpoint=PATH`); every
    error is a one-line `ConfigError` that starts with it and names the file."""
    path = Path(path).expanduser()
    where = _where(option, path)
    if not path.exists():
        raise ConfigError(f"{where}: no such file")
    if not path.is_file():
        raise ConfigError(f"{where}: not a file")
    if path.suffix == ".safetensors":  # no pickle at all
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise _unreadable(where, err) from err
    allowed = []
    if zipfile.is_zipfile(path):  # torch.save's format; the pickle's globals can be listed without loading it
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:
            raise _unreadable(where, err) from err
        allowed = [_legacy_global(name) for name in names]
        if any(obj is None for obj in allowed):
            raise _refused(where, [n for n, obj in zip(names, allowed) if obj is None])
        if any(name.startswith("numpy.") for name in names):  # numpy rebuilds arrays from its dtype classes
            import numpy as np

            allowed += list({type(np.dtype(t)) for t in set(np.sctypeDict.values())})
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # a legacy (non-zip) file is unpickled by the same restricted unpickler: its refusal names the global
        message = str(err)
        if "Unsupported global" in message:
            found = [part.split()[0].strip(" .,") for part in message.split("GLOBAL ")[1:]]
            raise _refused(where, found or ["unknown"]) from None
        raise _unreadable(where, err) from err


def state_mismatch(own: dict, state: dict) -> str | None:
    """A one-line summary of how `state` differs from the model's `own` state dict, or None if it fits."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]

    def some(names: list[str]) -> str:
        return f"(e.g. {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"

    parts = [f"missing {len(missing)} of the model's {len(own)} weights {some(missing)}"] if missing else []
    parts += [f"{len(unexpected)} unexpected weights {some(unexpected)}"] if unexpected else []
    parts += [f"{len(shapes)} shape mismatches {some(shapes)}"] if shapes else []
    return "; ".join(parts) or None


def check_resume_fits(module: torch.nn.Module, checkpoint: Any, option: str, path) -> None:
    """A resume/test checkpoint must be a Lightning checkpoint of the same method and network."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        raise ConfigError(f"{_where(option, Path(path))}: not a Lightning checkpoint (no 'state_dict'); an encoder.pt or "
                          f"weights file goes to model.backbone.checkpoint=PATH instead")
    diff = state_mismatch(module.state_dict(), checkpoint["state_dict"])
    if diff:
        raise ConfigError(f"{_where(option, Path(path))}: a checkpoint of another method or network: {diff}; resume with the "
                          f"model options that wrote it, or reuse its encoder with model.backbone.checkpoint=PATH")


class SafeCheckpointIO(AtomicCheckpointIO):
    """Lightning's checkpoint reader, through `safe_load`, and its atomic writer (AtomicCheckpointIO). `options` names the option each path came from
    (the runner's resolved `ckpt_path`); any other path is a file Lightning found by itself (SLURM requeue).
    `preloaded` holds checkpoints the runner has already read and checked, handed over once.
    `trusted` lists the files this process wrote or read successfully (what may be cleaned up later)."""

    def __init__(self, options: dict[str, str] | None = None, preloaded: dict[str, Any] | None = None):
        super().__init__()
        self.options = {str(Path(k)): v for k, v in (options or {}).items()}
        self.preloaded = {str(Path(k)): v for k, v in (preloaded or {}).items()}
        self.trusted: set[str] = set()

    def option_for(self, path) -> str:
        key = str(Path(path))
        if key in self.options:
            return self.options[key]
        if Path(path).name.startswith("hpc_ckpt_"):
            return f"SLURM requeue checkpoint {path} (found in the run dir by Lightning's auto-requeue)"
        return f"checkpoint {path}"

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        key = str(Path(path))
        checkpoint = self.preloaded.pop(key) if key in self.preloaded else safe_load(path, self.option_for(path))
        self.trusted.add(key)
        return checkpoint

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        self.trusted.add(str(Path(path)))
