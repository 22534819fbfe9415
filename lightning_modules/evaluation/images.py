"""One call for every image a method produces (sample grids, t-SNE maps, histograms): always a PNG in
`<run dir>/plots/<key>.png`, and the same image on every logger that accepts images (wandb,
TensorBoard); CSV has no images, so the file in the run dir is the copy every run has.

    from lightning_modules.evaluation.images import log_image
    log_image(self, "samples/ema", grid)            # grid: CHW tensor in [0, 1] or [-1, 1]
    log_image(self, "tsne/after", "plots/x.png")    # an existing file
    log_image(self, "clusters", fig)                # a matplotlib figure (closed afterwards)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch


def to_uint8_hwc(image) -> np.ndarray:
    """A CHW/HW tensor or array (floats in [0, 1] or [-1, 1], or uint8), a PIL image, a figure or a path."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            return np.asarray(img.convert("RGB"))
    if hasattr(image, "savefig"):  # matplotlib figure
        image.canvas.draw()
        return np.asarray(image.canvas.buffer_rgba())[..., :3].copy()
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).detach().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"log_image: expected an image of shape CHW or HW, got {tuple(x.shape)}")
    if x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)
    if x.dtype != torch.uint8:
        x = x.float()
        if x.min() < 0:
            x = (x + 1) / 2
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def log_image(module, key: str, image, step: int | None = None) -> Path:
    """Save `image` as <run dir>/plots/<key>.png and send it to the loggers that take images."""
    from PIL import Image

    trainer = module.trainer
    path = Path(trainer.default_root_dir) / "plots" / f"{key.replace('/', '_')}.png"
    step = trainer.global_step if step is None else step
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, (str, Path)) and str(image).endswith(".png"):
            if Path(image).resolve() != path.resolve():
                shutil.copyfile(image, path)
            array = to_uint8_hwc(image)
        else:
            array = to_uint8_hwc(image)
            Image.fromarray(array).save(path)
        if hasattr(image, "savefig"):
            import matplotlib.pyplot as plt

            plt.close(image)
        for logger in module.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image(key=key, images=[array], step=step)
            elif hasattr(experiment, "add_image"):  # tensorboard
                experiment.add_image(key, array, step, dataformats="HWC")
    return path
