"""SimCLR (Chen et al. 2020): two augmented views, encoder f, projection g, NT-Xent over 2N views.

    h = f(x~), z = g(h)                    (Sec. 2.1, Fig. 2)
    L = NT-Xent(z_1..z_2N; tau)            (Eq. 1), negatives = the other 2N - 2 views

Under DDP the projections of all processes are gathered with gradients, so the negatives span the
global batch (`components.contrastive.nt_xent`); `lr_scaling: linear|sqrt` scales the learning
rate with the global batch (Appendix B.1). The features used downstream are h, not z.
"""
from __future__ import annotations

import torch

from .components.contrastive import nt_xent
from .components.heads import ProjectionMLP
from .ssl_base import SSLMethod


class SimCLR(SSLMethod):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 projector: dict | None = None, temperature: float = 0.5, gather_negatives: bool = True,
                 **ssl_options):
        super().__init__(backbone, num_classes, in_chans, optimizer, scheduler, **ssl_options)
        self.save_hyperparameters(logger=False)
        self.projector = ProjectionMLP(self.backbone.num_features, **(projector or {}))
        self.temperature, self.gather_negatives = temperature, gather_negatives

    def pretext_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = views[:2]
        h = self.backbone(torch.cat([x1, x2]))  # both views in one pass: BN sees the 2N views
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent(z1, z2, self.temperature, gather=self.gather_negatives)
        return loss, h[: len(x1)]
