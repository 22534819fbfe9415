"""encoder.pt: every run with a backbone leaves it in the run dir, so another run can start from it
(`model.backbone.checkpoint=<run dir>/encoder.pt`, pipelines' hand-off)."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from lightning_modules.components.bottleneck import BottleneckEncoder
from lightning_modules.components.encoder_io import save_encoder

ENCODER_FILE = "encoder.pt"


def export_encoder(module: pl.LightningModule, data_info: dict, run_dir: Path) -> Path | None:
    """The module's `backbone` (and `classifier`, when it has one) with the data it was trained for."""
    if not hasattr(module, "backbone"):
        return None
    path = run_dir / ENCODER_FILE
    if isinstance(module.backbone, BottleneckEncoder):
        # the trunk is what a later run's `model.backbone.checkpoint` rebuilds; the classifier sees the bottleneck
        save_encoder(module.backbone.trunk, path, data_info)
        return path
    save_encoder(module.backbone, path, data_info, head=getattr(module, "classifier", None))
    return path
