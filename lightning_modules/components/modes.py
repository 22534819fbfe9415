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


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module):
    """BatchNorm layers normalise with the batch's statistics but leave their running statistics alone (momentum 0)
    inside the block: for a pretext pass on inputs unlike those the encoder is evaluated on (tiles, masked or noisy
    images), so that the running statistics, used by kNN and the probe at test time, stay those of whole images."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
