"""Frechet distance on features of a classifier the project trains itself (no Inception download).

FID (Heusel et al. 2017): d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between Gaussians fitted to
features of two image sets. Here the features are the pooled 128-d features of `small_cnn`, trained with
cross-entropy on the train split of the same dataset. The trained classifier is cached on disk under a key
made of the dataset spec, image size, channels, split settings and the classifier's own settings, so every
run on that data compares samples on the same features (numbers are comparable across runs, not with the
Inception FID of papers). Its logits also give the predicted-class histogram of samples.

Every image set, real, generated or noise, goes through the same pipeline: clamp to [-1, 1], quantise to
8 bits as a saved image would be, then the classifier.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import ConfigError
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.safe_load import safe_load, state_mismatch

log = logging.getLogger(__name__)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the 8-bit image a PNG would hold -> [-1, 1] floats."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().div(127.5).sub(1)


def matrix_sqrt(m: np.ndarray) -> np.ndarray:
    """`scipy.linalg.sqrtm` without its `disp` argument (removed in SciPy 1.18); the caller checks the
    result's finiteness and imaginary part itself, so SciPy's singular-matrix warning is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between Gaussians fitted to two (N, D) feature arrays (Heusel et al. 2017, eq. 6)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = matrix_sqrt(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as pytorch-fid does
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = matrix_sqrt((cov_a + eps) @ (cov_b + eps))
    if np.iscomplexobj(covmean):
        # rounding gives a tiny imaginary part; a large one means the square root is not meaningful
        imag = float(np.abs(np.diagonal(covmean).imag).max(initial=0.0))
        if imag > 1e-3:
            log.warning("FID: the covariance square root has an imaginary part of %.3g; the FID is unreliable", imag)
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def class_histogram(logits: torch.Tensor, num_classes: int) -> np.ndarray:
    """Fraction of samples predicted as each class."""
    counts = torch.bincount(logits.argmax(1).cpu(), minlength=num_classes).double()
    return (counts / max(len(logits), 1)).numpy()


class FeatureClassifier(nn.Module):
    """`small_cnn` + linear head; `features(x)` are the pooled penultimate features used for the FID."""

    def __init__(self, in_chans: int, num_classes: int, name: str = "small_cnn"):
        super().__init__()
        self.backbone = create_backbone(name, in_chans=in_chans)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, torch.Tensor]:
        """(features, logits) of [-1, 1] images after `quantize`, in eval mode, on the module's device."""
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for chunk in images.split(batch_size):
            f = self.backbone(quantize(chunk).to(device))
            feats.append(f.float().cpu())
            logits.append(self.head(f).float().cpu())
        return torch.cat(feats).numpy(), torch.cat(logits)


def cache_key(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _accuracy(model: FeatureClassifier, loader: DataLoader) -> float:
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(quantize(x)).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def train_classifier(train: Dataset, test: Dataset, in_chans: int, num_classes: int, name: str = "small_cnn",
                     epochs: int = 5, lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> tuple[FeatureClassifier, float]:
    """Cross-entropy training with Adam and light shifts (+-2 px); returns the model and its test accuracy."""
    # Called from inside Lightning's test loop: leave inference mode and autocast for this fp32 training.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _train_classifier(train, test, in_chans, num_classes, name, epochs, lr, batch_size, seed)


def _train_classifier(train, test, in_chans, num_classes, name, epochs, lr, batch_size, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FeatureClassifier(in_chans, num_classes, name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(quantize(x), shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), _accuracy(model, DataLoader(test, batch_size=500))


def classifier_cache_file(cache_dir: str | Path, spec: dict, model: nn.Module) -> Path:
    """The cache file of a classifier: keyed by its spec and its weights' names and shapes, so a cache
    written by a version whose classifier differs (e.g. before backbones had input_norm) is another file."""
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return Path(cache_dir).expanduser() / f"fid_classifier-{cache_key({**spec, 'layout': layout})}.pt"


def cached_classifier(cache_dir: str | Path, key_spec: dict, train: Dataset, test: Dataset, in_chans: int,
                      num_classes: int, **train_options) -> tuple[FeatureClassifier, dict]:
    """Load the classifier for `key_spec` from `cache_dir`, or train it once and store it there.

    Returns the model and its metadata (key spec, test accuracy, file)."""
    model = FeatureClassifier(in_chans, num_classes, train_options.get("name", "small_cnn"))
    spec = {**key_spec, "in_chans": in_chans, "num_classes": num_classes, **train_options}
    path = classifier_cache_file(cache_dir, spec, model)
    if path.is_file():
        option = f"model.evaluation.cache_dir={cache_dir} (FID classifier cache)"
        stored = safe_load(path, option)
        state = stored.get("state_dict") if isinstance(stored, dict) else None
        diff = state_mismatch(model.state_dict(), state) if isinstance(state, dict) else "no 'state_dict'"
        if diff or "meta" not in stored:
            raise ConfigError(f"{option}: {path} does not fit the FID classifier ({diff or 'no meta'}); "
                              f"delete it to train a new one")
        model.load_state_dict(state)
        return model.eval(), {**stored["meta"], "file": str(path), "cached": True}
    log.info("training the FID feature classifier (cached at %s)", path)
    model, acc = train_classifier(train, test, in_chans, num_classes, **train_options)
    meta = {"spec": spec, "test_acc": acc}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)
    return model, {**meta, "file": str(path), "cached": False}
