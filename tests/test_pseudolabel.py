"""Pseudo-Label (lightning_modules/pseudolabel.py) and the semi-supervised DataModule (datamodules/semisup.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from functools import partial

from conftest import read_results
from datamodules.errors import ConfigError
from datamodules.semisup import SemiSupervisedDataModule
from lightning_modules.pseudolabel import PseudoLabel, alpha_schedule, pseudo_label_loss


@pytest.mark.parametrize("t", [0, 50, 99.9, 100, 101, 350, 599, 600, 700])
def test_alpha_schedule_matches_lee_eq16(t):
    t1, t2, alpha_f = 100, 600, 3.0
    expected = 0.0 if t < t1 else (alpha_f * (t - t1) / (t2 - t1) if t < t2 else alpha_f)
    assert alpha_schedule(t, t1, t2, alpha_f) == pytest.approx(expected)
    assert alpha_schedule(350, t1, t2, alpha_f) == pytest.approx(1.5)  # halfway up the ramp


def test_pseudo_label_loss_is_ce_to_argmax_with_threshold_mask():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2]], requires_grad=True)
    loss, pseudo, accepted = pseudo_label_loss(logits, threshold=0.5)
    assert pseudo.tolist() == [0, 2] and accepted.tolist() == [True, False]
    expected = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])) / 2  # 1/n' over all n'
    assert torch.allclose(loss, expected)


def make_dm(num_labels=30, **kw):
    dm = SemiSupervisedDataModule({"name": "digits"}, num_labels=num_labels, label_seed=0, batch_size=16,
                                  unlabeled_batch_size=32, **kw)
    dm.setup("fit")
    return dm


def test_split_is_class_balanced_seeded_and_disjoint():
    dm = make_dm(30)
    labels = dm.splits.train.labels.numpy()
    assert np.bincount(labels[dm.labeled_idx], minlength=10).tolist() == [3] * 10
    assert len(np.intersect1d(dm.labeled_idx, dm.unlabeled_idx)) == 0
    assert len(dm.labeled_idx) + len(dm.unlabeled_idx) == len(labels)
    assert np.array_equal(make_dm(30).labeled_idx, dm.labeled_idx)
    with pytest.raises(ConfigError, match="num_labels"):
        make_dm(5)


def test_unlabeled_true_labels_never_reach_the_loss():
    """The unlabeled training batches hold images only, and scrambling the hidden labels changes nothing."""
    def loss_of(scramble: bool) -> torch.Tensor:
        dm = make_dm(30)
        if scramble:
            dm.unlabeled.labels = torch.randint(10, dm.unlabeled.labels.shape, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        loader = dm.train_dataloader()
        iter(loader)
        batch, _, _ = next(iter(loader))
        assert set(batch) == {"labeled", "unlabeled"} and isinstance(batch["unlabeled"], torch.Tensor)
        assert batch["unlabeled"].ndim == 4  # images only: no (x, y) pair
        torch.manual_seed(0)
        model = PseudoLabel({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=partial(torch.optim.SGD, lr=0.1),
                            t1=0, t2=1, alpha_f=3.0)
        model.alpha = lambda: 3.0
        model.log = lambda *a, **k: None
        model.metrics.log_step = lambda module, stage, logits, y, prefix="": torch.nn.functional.cross_entropy(logits, y)
        model.eval()  # no dropout: deterministic
        return model.training_step(batch, 0)

    assert torch.equal(loss_of(False), loss_of(True))


def test_bad_schedule_is_a_clear_error():
    with pytest.raises(ConfigError, match="t1"):
        PseudoLabel({"name": "lenet"}, 10, 1, optimizer=None, t1=5, t2=5)


def test_supervised_only_baseline_is_one_flag_away():
    """model.alpha_f=0: alpha(t) = 0 throughout and the unlabeled images are never even forwarded."""
    torch.manual_seed(0)
    model = PseudoLabel({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=None, t1=0, t2=1, alpha_f=0.0)
    model.log = lambda *a, **k: None
    model.metrics.log_step = lambda module, stage, logits, y, prefix="": torch.nn.functional.cross_entropy(logits, y)
    assert model.alpha() == 0.0
    batch = {"labeled": (torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])), "unlabeled": None}
    assert torch.isfinite(model.training_step(batch, 0))


def test_pseudolabel_runs_end_to_end(cli, tmp_path):
    """With the default schedule (T1, T2 fractions of the run) the term switches on even in a 3-step run."""
    cli("model=pseudolabel", "data=digits", "debug=smoke", "data.num_labels=50",
        "callbacks.progress_bar=null", run_dir=tmp_path)
    metrics = read_results(tmp_path)["metrics"]
    for key in ("test/acc", "train/alpha", "train/accepted", "train/unlabeled_loss", "val/pseudo_acc", "val/acc"):
        assert key in metrics, key
    assert metrics["train/alpha"] > 0


def test_pseudo_labels_come_from_the_network_as_it_predicts():
    """pseudo_labels_from=eval: y' is the argmax of the network with dropout off (no gradient), the loss is
    taken on the dropout training pass, and every submodule is back in its mode afterwards."""
    torch.manual_seed(0)
    model = PseudoLabel({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=None, t1=0, t2=1, alpha_f=3.0)
    model.train()
    x_u = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x_u)
    model.train()
    labeling = model.labeling_logits(x_u)
    assert all(m.training for m in model.modules()) and not labeling.requires_grad
    assert torch.equal(labeling, expected)
    dropout_pass = model(x_u)
    assert not torch.equal(dropout_pass.argmax(1), expected.argmax(1))  # dropout changes some argmaxes
    loss, pseudo, _ = pseudo_label_loss(dropout_pass, 0.0, labeling)
    assert torch.equal(pseudo, expected.argmax(1))
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(dropout_pass, expected.argmax(1)))
    with pytest.raises(ConfigError, match="pseudo_labels_from"):
        PseudoLabel({"name": "lenet"}, 10, 1, optimizer=None, pseudo_labels_from="teacher")
