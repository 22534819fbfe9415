"""Switching a network's train / eval behaviour for a block of code, and back: the one way methods do it."""
from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """`module` in eval mode inside the block (BatchNorm's running statistics, no dropout); its mode before
    the block afterwards (`module.train(was)`, so a module's own `train` override still applies)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def dropout_off(module: nn.Module):
    """Only the dropout layers of `module` in eval mode inside the block (the activations the test sees),
    BatchNorm left as it is."""
    dropouts = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in dropouts:
        m.eval()
    try:
        yield
    finally:
        for m in dropouts:
            m.train()
