"""Small heads shared by methods: the projection MLP of SimCLR / MoCo v2 and a plain classifier."""
from __future__ import annotations

from torch import nn


class ProjectionMLP(nn.Sequential):
    """g(h) of SimCLR (Sec. 2.1): `num_layers` linear layers with ReLU between them (BatchNorm after
    the hidden linears when `batch_norm`), hidden width `hidden_dim`, output `out_dim`.
    SimCLR v1 / MoCo v2: 2 layers, no BN; SimCLR v2: 3 layers with BN."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = False):
        layers, dim = [], in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim
