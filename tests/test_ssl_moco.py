"""MoCo: the key encoder gets no gradient and follows the EMA rule; shuffle-BN un-shuffles
correctly; the queue and key encoder are saved in checkpoints and restored on resume."""
from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from datamodules.errors import ConfigError
from datamodules.multiview import MultiViewDataModule
from lightning_modules.moco import MoCo


def _moco(**kw):
    opts = dict(backbone={"name": "small_cnn", "widths": (4, 8, 8)}, num_classes=10, in_chans=1,
                optimizer=partial(torch.optim.SGD, lr=0.05), projector={"hidden_dim": 16, "out_dim": 8},
                queue_size=128, momentum=0.9, bn="shuffle", bn_splits=2, evaluation={"tsne": False, "knn_k": 5})
    return MoCo(**{**opts, **kw})


def test_key_encoder_gets_no_gradient_and_follows_ema():
    torch.manual_seed(0)
    m = _moco()
    with torch.no_grad():  # make query and key encoders differ
        for p in m.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    key_before = [p.clone() for p in m.key_backbone.parameters()] + [p.clone() for p in m.key_projector.parameters()]
    query_now = [p.clone() for p in m.backbone.parameters()] + [p.clone() for p in m.projector.parameters()]
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    loss, features = m.pretext_step(views)
    loss.backward()
    keys = list(m.key_backbone.parameters()) + list(m.key_projector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in keys)
    assert all(p.grad is not None for p in m.backbone.parameters())
    for after, before, q in zip(keys, key_before, query_now):
        assert torch.allclose(after, 0.9 * before + 0.1 * q, atol=1e-6)  # theta_k <- m theta_k + (1-m) theta_q
    assert int(m.queue_ptr) == 8 and features.shape == (8, m.backbone.num_features)


def test_single_process_shuffle_bn_unshuffles_keys():
    torch.manual_seed(0)
    m = _moco(bn_splits=4).eval()  # running statistics: keys must not depend on the shuffle
    m.resolve_bn()
    x = torch.randn(12, 1, 16, 16)
    assert torch.allclose(m.encode_keys(x), m._key_encoder(x), atol=1e-6)


def test_bn_choice_is_checked():
    with pytest.raises(ConfigError, match="model.bn"):
        _moco(bn="ghost")
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        _moco(bn="sync").resolve_bn()  # one process has no SyncBN


class _Snapshot(pl.Callback):
    def on_train_start(self, trainer, module):
        self.queue = module.queue.clone()
        self.ptr = int(module.queue_ptr)
        self.key = [p.clone() for p in module.key_backbone.parameters()]


def _fit(module, tmp_path, epochs, ckpt_path=None):
    dm = MultiViewDataModule({"name": "digits"}, batch_size=16, eval_batch_size=512, image_size=16, knn_bank_size=64)
    snap = _Snapshot()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snap, ckpt],
                         accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return snap


def test_resume_restores_queue_and_key_encoder(tmp_path):
    torch.manual_seed(0)
    first = _moco()
    _fit(first, tmp_path, epochs=1)
    assert int(first.queue_ptr) == 32
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert "queue" in saved and "queue_ptr" in saved and any(k.startswith("key_backbone.") for k in saved)

    torch.manual_seed(1)
    resumed = _moco()
    snap = _fit(resumed, tmp_path, epochs=2, ckpt_path=str(tmp_path / "last.ckpt"))
    assert torch.equal(snap.queue, first.queue) and snap.ptr == 32
    assert all(torch.equal(a, b) for a, b in zip(snap.key, first.key_backbone.parameters()))
    assert int(resumed.queue_ptr) == 64  # training went on from the restored pointer


def test_auto_bn_skips_the_shuffle_when_the_encoder_has_no_batchnorm():
    """`bn=auto`: a BN-free encoder (LeNet) has no batch statistics to leak, so no sub-batch forwards;
    an encoder with BatchNorm gets the single-process shuffle-BN."""
    lenet = MoCo(backbone={"name": "lenet"}, num_classes=10, in_chans=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                 queue_size=128, evaluation={"tsne": False, "knn_k": 5})
    assert not lenet.encoder_has_batchnorm() and lenet.resolve_bn() == "none" and lenet._split() == 1
    with_bn = _moco(bn="auto")
    assert with_bn.encoder_has_batchnorm() and with_bn.resolve_bn() == "shuffle" and with_bn._split() == 2
    lenet_shuffle = MoCo(backbone={"name": "lenet"}, num_classes=10, in_chans=1, queue_size=128, bn="shuffle",
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.1), evaluation={"tsne": False, "knn_k": 5})
    assert lenet_shuffle.resolve_bn() == "shuffle"  # an explicit choice is kept
