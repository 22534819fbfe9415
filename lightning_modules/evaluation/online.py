"""Online evaluation of a feature extractor while it trains on a pretext task.

The only place where a self-supervised method reads labels. Three evaluators, one module:

- **linear probe**: a linear classifier on *detached* features, trained alongside the pretext
  task on the training batches (so it never changes the encoder). Scored at validation and
  test as `{stage}/linear_acc` (torchmetrics, exact under DDP).
- **weighted kNN** (Wu et al. 2018, Sec. 3.4): cosine similarity to a bank of un-augmented
  training features, the k nearest vote with weight exp(sim / T). `{stage}/knn_acc`.
- **t-SNE** of the test features coloured by class, saved as `<run dir>/plots/tsne_test.png`
  (a stratified subset of `tsne_points` test images).

Use it from any LightningModule (SSL methods get it from `ssl_base.SSLMethod`):

    self.online = OnlineEvaluator(num_features, num_classes, knn_k=20)
    # optimizer: add self.online.param_group() to the parameter groups
    # training_step:  loss = pretext_loss + self.online.training_loss(self, features, y)
    # validation_step / test_step(batch, batch_idx, dataloader_idx):
    #     self.online.eval_step(self, stage, self.backbone(x), y, dataloader_idx)
    # on_validation_epoch_end / on_test_epoch_end: self.online.eval_epoch_end(self, stage)

The evaluation loaders come as `[split scored, kNN bank of training images]`
(`datamodules.multiview.MultiViewDataModule`); dataloader_idx 0 is scored, 1 fills the bank.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.splits import stratified_subset

from ..components.distributed import gather_rows

from .embedding_plot import save_tsne_plot

SCORED, BANK = 0, 1


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): class score = sum over the k most cosine-similar bank items of
    exp(sim / T); returns the predicted class of every query row."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=query.device)


class LinearProbe(nn.Module):
    """BatchNorm without affine parameters, then a linear classifier (the MAE-style probe: the BN
    only standardises the features, so the classifier stays linear in them)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(features.detach().float()))


class OnlineEvaluator(nn.Module):
    def __init__(self, num_features: int, num_classes: int, probe_lr: float = 0.01, knn_k: int = 20,
                 knn_temperature: float = 0.07, tsne: bool = True, tsne_points: int = 2000):
        super().__init__()
        if knn_k < 1:
            raise ValueError(f"model.evaluation.knn_k={knn_k} must be >= 1")
        self.num_classes, self.probe_lr = num_classes, probe_lr
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.tsne, self.tsne_points = tsne, tsne_points
        self.probe = LinearProbe(num_features, num_classes)
        self.acc = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")})
        self._store: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {SCORED: [], BANK: []}

    def param_group(self) -> dict:
        """The probe's optimizer parameter group: its own learning rate, no weight decay."""
        return {"params": list(self.probe.parameters()), "lr": self.probe_lr, "weight_decay": 0.0}

    def training_loss(self, module: pl.LightningModule, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the probe on detached features; add it to the pretext loss."""
        logits = self.probe(features)
        loss = F.cross_entropy(logits, y)
        self.acc["train_acc"].update(logits.detach(), y)  # logged per epoch: update only
        module.log("train/linear_loss", loss, on_step=True, on_epoch=True, batch_size=len(y))
        module.log("train/linear_acc", self.acc["train_acc"], on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    @torch.no_grad()
    def eval_step(self, module: pl.LightningModule, stage: str, features: torch.Tensor, y: torch.Tensor,
                  dataloader_idx: int = 0) -> None:
        """Loader 0: score the probe and keep the features as kNN queries; loader 1: fill the bank."""
        features = features.detach().float()
        self._store[dataloader_idx].append((features, y))
        if dataloader_idx == SCORED:
            self.acc[f"{stage}_acc"](self.probe(features), y)
            module.log(f"{stage}/linear_acc", self.acc[f"{stage}_acc"], on_step=False, on_epoch=True,
                       add_dataloader_idx=False, batch_size=len(y), prog_bar=True)

    def _collected(self, which: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        items = self._store[which]
        if not items:
            return None
        features = torch.cat([f for f, _ in items])
        labels = torch.cat([y for _, y in items])
        return gather_rows(features), gather_rows(labels)

    @torch.no_grad()
    def eval_epoch_end(self, module: pl.LightningModule, stage: str) -> dict[str, float]:
        """kNN accuracy of this epoch's queries against the bank; at test also the t-SNE plot."""
        queries, bank = self._collected(SCORED), self._collected(BANK)
        self._store = {SCORED: [], BANK: []}
        out = {}
        if queries is None or bank is None:
            return out
        preds = knn_predict(queries[0], bank[0], bank[1], self.num_classes, self.knn_k, self.knn_temperature)
        out[f"{stage}/knn_acc"] = (preds == queries[1]).float().mean().item()
        # every process computed the same value from the gathered features: no reduction needed
        module.log(f"{stage}/knn_acc", out[f"{stage}/knn_acc"], prog_bar=True, rank_zero_only=False)
        trainer = module.trainer
        if stage == "test" and self.tsne and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "plots" / "tsne_test.png"
            labels = queries[1].cpu().numpy()
            keep = stratified_subset(labels, self.tsne_points)
            save_tsne_plot(queries[0].cpu().numpy()[keep], labels[keep], path,
                           title=f"t-SNE of test features, {type(module).__name__} (colour = class)")
        return out
