"""SHOT: Source HypOthesis Transfer (Liang et al., "Do We Really Need to Access the Source Data?", ICML 2020).

The source classifier head (the hypothesis) is frozen; the feature extractor is trained on unlabeled target
images so that their features fit it:

    L = L_ent + L_div + beta * CE(p(x), y_hat(x))                                   (Eq. 7)

L_ent + L_div: information maximisation, confident and diverse predictions (Eq. 2-3;
components/source_free.py). y_hat: self-supervised pseudo-labels from class centroids of the target features,
recomputed every `label_every_epochs` epochs from the whole target set (Eq. 4-6). Under DDP the centroids come
from all processes' features (gathered), and pbar of L_div is the mean over the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .components.distributed import gather_with_grad
from .components.source_free import centroid_pseudo_labels, information_maximization_loss
from .source_free import SourceFree


class SHOT(SourceFree):
    def __init__(self, *args, beta: float = 0.3, label_every_epochs: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.label_every_epochs = float(beta), max(1, int(label_every_epochs))
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long), persistent=False)

    def on_train_epoch_start(self) -> None:
        if self.beta > 0 and (self.current_epoch % self.label_every_epochs == 0 or not len(self.pseudo_labels)):
            features, probs, _ = self.target_predictions()
            self.pseudo_labels = centroid_pseudo_labels(features, probs)
            self.log_train({"train/target_images": len(features), "train/pseudo_labels": len(self.pseudo_labels)}, 1)

    def adaptation_losses(self, x, positions):
        logits = self(x).float()
        probs = logits.softmax(1)
        im, ent, div = information_maximization_loss(probs, gather_with_grad(probs).mean(0))
        losses = {"train/ent": ent, "train/div": div}
        loss = im
        if self.beta > 0:
            ce = F.cross_entropy(logits, self.pseudo_labels[positions])
            loss = loss + self.beta * ce
            losses["train/pseudo_ce"] = ce
        return {"train/loss": loss, **losses}
