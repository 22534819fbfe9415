"""FixMatch and Mean Teacher (lightning_modules/fixmatch.py, mean_teacher.py), their shared parts
(components/strong_augment.py, components/pseudo_labels.py, semisup_base.py), the semi-supervised
DataModule's `mu` and `missing_classes`, and the pseudo-labeling dynamics callback."""
from __future__ import annotations

import math
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import read_results
from datamodules.errors import ConfigError
from datamodules.semisup import SemiSupervisedDataModule
from lightning_modules.components import strong_augment as sa
from lightning_modules.components.param_groups import starts_pretrained
from lightning_modules.components.pseudo_labels import pseudo_label_loss, softmax_mse
from lightning_modules.components.schedules import sigmoid_rampup
from lightning_modules.fixmatch import FixMatch
from lightning_modules.mean_teacher import MeanTeacher, input_noise_std, mean_teacher_decay

SGD = partial(torch.optim.SGD, lr=0.1)


# ---- the strong policy: FixMatch Table 12 ----------------------------------------------------------------
def test_strong_policy_has_fixmatch_table12_operations_and_ranges():
    assert sa.RANGES == {
        "autocontrast": (0.0, 0.0), "brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
        "equalize": (0.0, 0.0), "identity": (0.0, 0.0), "posterize": (4.0, 8.0), "rotate": (-30.0, 30.0),
        "sharpness": (0.05, 0.95), "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0.0, 1.0),
        "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3)}
    assert sa.CUTOUT_MAX == 0.5
    g = torch.Generator().manual_seed(0)
    for name, (low, high) in sa.RANGES.items():
        m = sa.draw_magnitudes(name, 2000, g)
        assert low <= m.min() and m.max() <= high, name
        if high > low:
            assert m.max() - m.min() > 0.9 * (high - low), name  # the whole range is used


def _images(n=6, c=1, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_each_operation_does_what_its_name_says():
    u = _images()
    n = len(u)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        assert torch.allclose(sa.OPS[name](u, full(0)), u, atol=1e-5), name  # magnitude 0: identity
    assert torch.equal(sa.OPS["identity"](u, full(0)), u)
    assert torch.allclose(sa.OPS["posterize"](u, full(8)), (u * 255).round() / 255)
    assert torch.all(((sa.OPS["posterize"](u, full(4)) * 255).round() % 16) == 0)  # 4 bits kept
    assert torch.allclose(sa.OPS["brightness"](u, full(0.3)), u * 0.3)  # asymmetric factors: f, not 1 - f
    assert torch.allclose(sa.OPS["solarize"](u, full(0.3)), torch.where(u >= 0.3, 1 - u, u))
    rgb = _images(c=3)
    grey = (rgb * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(sa.OPS["color"](rgb, full(0.3)), grey + 0.3 * (rgb - grey), atol=1e-6)
    assert torch.equal(sa.OPS["color"](u, full(0.3)), u)  # saturation: nothing to do on grey images
    flat = torch.full_like(u, 0.4)
    assert torch.allclose(sa.OPS["sharpness"](flat, full(0.05)), flat)  # smoothing a constant changes nothing
    spike = torch.zeros(1, 1, 5, 5)
    spike[..., 2, 2] = 1
    assert sa.OPS["sharpness"](spike, torch.tensor([0.3]))[0, 0, 2, 2] == pytest.approx(5 / 13 + 0.3 * (1 - 5 / 13))
    assert torch.allclose(sa.OPS["contrast"](u, full(0.05)).std((1, 2, 3)), 0.05 * u.std((1, 2, 3)), rtol=1e-4)
    ac = sa.OPS["autocontrast"](0.25 + 0.5 * u, full(0))
    assert torch.allclose(ac.amin((1, 2, 3)), torch.zeros(n), atol=1e-6) and torch.allclose(ac.amax((1, 2, 3)), torch.ones(n))
    eq = sa.OPS["equalize"](u * 0.3, full(0))  # equalised: the levels spread over [0, 1]
    assert eq.amax() == 1 and eq.amin() == 0
    # translate_x by a quarter of the side moves the content 4 px right on a 16 px image (black fill)
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8, 6] = 1
    shifted = sa.OPS["translate_x"](x, torch.tensor([0.25]))
    assert shifted[0, 0, 8, 10] == pytest.approx(1.0) and shifted[0, 0, 8, 6] == 0
    rot = sa.OPS["rotate"](x, torch.tensor([90.0]))
    assert rot.sum() == pytest.approx(1.0, abs=1e-4) and rot[0, 0, 8, 6] < 0.01  # moved, kept
    for name, (low, high) in sa.RANGES.items():  # every output stays an image in [0, 1]
        out = sa.OPS[name](u, sa.draw_magnitudes(name, n))
        assert out.shape == u.shape and out.min() >= 0 and out.max() <= 1, name


def test_cutout_is_a_grey_square_of_at_most_the_drawn_side():
    u = torch.zeros(200, 1, 20, 20)
    side = torch.full((200,), 0.5)
    out = sa.cutout(u, side, torch.Generator().manual_seed(0))
    grey = (out == 0.5).sum((1, 2, 3))
    assert grey.max() == 100 and grey.min() > 0  # 10 x 10 when inside the image, clipped at the border


def test_strong_augment_draws_per_image_and_stays_in_range():
    x = _images(1).repeat(64, 1, 1, 1) * 2 - 1  # the same image 64 times
    out = sa.StrongAugment()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out.round(decimals=4)}
    assert len(distinct) > 40  # each image its own operations and magnitudes
    with pytest.raises(ConfigError, match="ops"):
        FixMatch({"name": "lenet"}, 10, 1, optimizer=None, strong={"ops": ["mixup"]})


# ---- the threshold mask -------------------------------------------------------------------------------------
def test_fixmatch_mask_uses_weak_view_confidence_on_a_hand_case():
    weak = torch.tensor([[5.0, 0.0, 0.0],     # p(0) = 0.9867 >= 0.95: kept, label 0
                         [1.0, 0.0, 0.0],     # p(0) = 0.576: masked
                         [0.0, 0.0, 3.0]])    # p(2) = 0.907: masked at 0.95
    strong = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loss, pseudo, accepted = pseudo_label_loss(strong, 0.95, weak)
    assert pseudo.tolist() == [0, 0, 2] and accepted.tolist() == [True, False, False]
    expected = (math.log(math.e + 2) - 0.0) / 3  # CE of row 0 towards class 0, over all 3 (1/(mu B))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.all(strong.grad[1:] == 0)  # masked rows give no gradient
    _, _, accepted = pseudo_label_loss(strong.detach(), 0.9, weak)
    assert accepted.tolist() == [True, False, True]


# ---- Mean Teacher --------------------------------------------------------------------------------------------
def _mt(**kw):
    torch.manual_seed(0)
    return MeanTeacher({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=SGD, **kw)


def _quiet(model):
    model.log = lambda *a, **k: None
    model.log_train = lambda *a, **k: None
    model.metrics.log_step = lambda module, stage, logits, y, prefix="": F.cross_entropy(logits, y)
    return model


def test_mean_teacher_teacher_gets_no_gradient_and_follows_the_ema():
    model = _quiet(_mt(ema_decay=0.9))
    model._trainer = types.SimpleNamespace(global_step=0, global_rank=0)
    model.weight = lambda: 5.0
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not teacher_ids & {id(p) for p in model.parameter_groups()}  # the optimizer never sees it
    batch = {"labeled": (torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])), "unlabeled": torch.randn(8, 1, 28, 28)}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    before = [p.clone() for p in model.teacher.parameters()]
    torch.optim.SGD(model.parameter_groups(), lr=0.1).step()
    model._trainer.global_step = 20  # a = min(1 - 1/21, 0.9) = 0.9
    model.on_train_batch_end(None, batch, 0)
    student = list(model.backbone.parameters()) + list(model.classifier.parameters())
    for t, t0, s in zip(model.teacher.parameters(), before, student):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    assert mean_teacher_decay(0, 0.99) == 0.0 and mean_teacher_decay(3, 0.99) == 0.75
    assert mean_teacher_decay(10_000, 0.99) == 0.99


def test_mean_teacher_consistency_and_rampup():
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    expected = ((s.softmax(1) - t.softmax(1)) ** 2).mean()
    loss = softmax_mse(s, t)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert t.grad is None  # the teacher's side is a target
    assert sigmoid_rampup(0.0, 0.4) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.2, 0.4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(0.4, 0.4) == 1.0 and sigmoid_rampup(0.9, 0.4) == 1.0
    with pytest.raises(ConfigError, match="evaluate_with"):
        _mt(evaluate_with="both")


# ---- a pretrained backbone trains at a fraction of the head's lr -------------------------------------------
def test_backbone_lr_and_input_noise_follow_whether_the_backbone_starts_pretrained():
    assert starts_pretrained({"name": "tf_efficientnet_lite0", "pretrained": True})
    assert starts_pretrained({"name": "lenet", "checkpoint": "run/encoder.pt"})
    assert not starts_pretrained({"name": "lenet", "pretrained": False, "pretrained_file": None, "checkpoint": None})
    scratch = FixMatch({"name": "lenet"}, 10, 1, optimizer=SGD)
    head, backbone = scratch.parameter_groups()
    assert (head["lr"], backbone["lr"]) == (0.1, 0.1)  # from scratch: one lr (the default null resolves to 1)
    assert {id(p) for p in head["params"]} == {id(p) for p in scratch.classifier.parameters()}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in scratch.backbone.parameters()}
    teacher = _mt(backbone_lr_mult=0.1)
    head, backbone = teacher.parameter_groups()
    assert (head["lr"], backbone["lr"]) == (0.1, pytest.approx(0.01))
    assert not {id(p) for p in teacher.teacher.parameters()} & {id(p) for g in (head, backbone) for p in g["params"]}
    with pytest.raises(ConfigError, match="backbone_lr_mult"):
        _mt(backbone_lr_mult=0)
    assert _mt().noise_std == 0.15  # the paper's input noise, from scratch
    assert input_noise_std(None, {"name": "tf_efficientnet_lite0", "pretrained": True}) == 0.0
    assert input_noise_std(0.05, {"name": "tf_efficientnet_lite0", "pretrained": True}) == 0.05
    with pytest.raises(ConfigError, match="noise_std"):
        _mt(noise_std=-1)


# ---- hidden labels never reach a loss ---------------------------------------------------------------------
def make_dm(num_labels=30, **kw):
    dm = SemiSupervisedDataModule({"name": "digits"}, num_labels=num_labels, label_seed=0, batch_size=8,
                                  **({"unlabeled_batch_size": 16} | kw))
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("method", [FixMatch, MeanTeacher])
def test_hidden_labels_of_the_unlabeled_part_never_reach_the_loss(method):
    """The unlabeled batch is images only, and poisoning the hidden labels leaves the loss unchanged."""
    def loss_of(poison: bool) -> torch.Tensor:
        dm = make_dm()
        if poison:
            dm.unlabeled.labels = torch.randint(10, dm.unlabeled.labels.shape, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        batch, _, _ = next(iter(dm.train_dataloader()))
        assert isinstance(batch["unlabeled"], torch.Tensor) and batch["unlabeled"].ndim == 4
        torch.manual_seed(0)
        model = _quiet(method({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=SGD))
        if method is FixMatch:
            model.threshold = 0.0  # every pseudo-label used, so the unlabeled term is not zero
        else:
            model.weight = lambda: 5.0
        model.eval()  # no dropout: deterministic
        return model.training_step(batch, 0)

    clean = loss_of(False)
    assert torch.equal(clean, loss_of(True)) and clean > 0


# ---- DataModule: mu, missing classes, 1 and 2 labels per class ----------------------------------------------
def test_mu_sets_the_unlabeled_batch_and_conflicts_are_errors():
    assert make_dm(mu=7, unlabeled_batch_size=None).unlabeled_batch_size == 56
    with pytest.raises(ConfigError, match="data.mu"):
        make_dm(mu=7, unlabeled_batch_size=64)


def test_missing_class_is_unlabeled_only_and_bad_classes_are_errors():
    dm = make_dm(100, missing_classes=[7])
    labels = dm.splits.train.labels.numpy()
    counts = np.bincount(labels[dm.labeled_idx], minlength=10)
    assert counts[7] == 0 and all(counts[c] == 10 for c in range(10) if c != 7)
    assert (labels[dm.unlabeled_idx] == 7).sum() == (labels == 7).sum()  # every 7 is unlabeled
    with pytest.raises(ConfigError, match=r"missing_classes=\[12\].*0\.\.9"):
        make_dm(100, missing_classes=[12])
    with pytest.raises(ConfigError, match="no labeled class"):
        make_dm(100, missing_classes=list(range(10)))


@pytest.mark.parametrize("num_labels", [10, 20])
def test_one_and_two_labels_per_class(num_labels):
    dm = make_dm(num_labels)
    labels = dm.splits.train.labels.numpy()
    assert np.bincount(labels[dm.labeled_idx], minlength=10).tolist() == [num_labels // 10] * 10
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert len(batch["labeled"][1]) == min(8, num_labels)


# ---- end to end: DDP, dynamics plots -------------------------------------------------------------------------
def test_fixmatch_ddp_cpu_with_dynamics_plots(cli, tmp_path):
    """Two gloo processes; the mask rate is an epoch mean over processes; process 0 draws the t-SNE maps.
    max_steps ends the run after epoch 1 of 3: the map of epoch -1 (the last) is that epoch's."""
    cli("model=fixmatch", "data=digits", "trainer=ddp_cpu", "trainer.max_epochs=3", "++trainer.max_steps=4",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_labels=20", "data.batch_size=8",
        "data.mu=2", "callbacks.progress_bar=null", "callbacks.model_checkpoint=null",
        "callbacks.pseudo_label_dynamics.epochs=[0,-1]", "callbacks.pseudo_label_dynamics.points=60",
        "callbacks.pseudo_label_dynamics.background_points=120", "callbacks.pseudo_label_dynamics.labeled_points=20",
        "data.missing_classes=[7]", run_dir=tmp_path)
    metrics = read_results(tmp_path)["metrics"]
    for key in ("test/acc", "train/accepted", "train/alpha", "train/unlabeled_loss", "val/pseudo_acc"):
        assert key in metrics, key
    plots = tmp_path / "plots"
    for name in ("dynamics/epoch_000.png", "dynamics/epoch_001.png", "dynamics_grid.png", "dynamics_curves.png",
                 "dynamics.json"):
        assert (plots / name).is_file(), name
    assert not (plots / "dynamics/epoch_002.png").exists()


# ---- learning: the unlabeled images help -------------------------------------------------------------------
def _fit_digits(method, seed: int, epochs: int, data: dict, **kw) -> tuple[float, float]:
    """(accuracy on the unlabeled training images, on the test split) of the predicting network after
    training on `digits` with 2 labels per class."""
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = SemiSupervisedDataModule({"name": "digits"}, num_labels=20, label_seed=seed, image_size=28,
                                  batch_size=20, **data)
    model = method({"name": "lenet"}, 10, 1, optimizer=partial(torch.optim.Adam, lr=1e-3), **kw)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    model.eval()

    @torch.no_grad()
    def accuracy(dataset):
        hits = [(model.evaluation_logits(x).argmax(1) == y).float() for x, y in dm.loader(dataset, train=False)]
        return torch.cat(hits).mean().item()

    return accuracy(dm.unlabeled), accuracy(dm.splits.test)


@pytest.mark.slow
def test_fixmatch_beats_supervised_only_on_digits_with_two_labels_per_class():
    """FixMatch vs the same run with model.lambda_u=0 (same labels, weak views, steps): 20 labels, 15 epochs.
    Measured (accuracy on the ~1,140 unlabeled training images / on the 359 test images, %):
    seed 0: 79.3 / 79.7 vs 75.0 / 76.6; seed 1: 83.6 / 83.0 vs 75.9 / 75.2. Gains of 4.4 and 7.7 points on
    the unlabeled images; the assertion asks for 2."""
    data = {"mu": 3}
    fixmatch_unlabeled, fixmatch_test = _fit_digits(FixMatch, 0, 15, data)
    supervised_unlabeled, supervised_test = _fit_digits(FixMatch, 0, 15, data, lambda_u=0.0)
    assert fixmatch_unlabeled >= supervised_unlabeled + 0.02, (fixmatch_unlabeled, supervised_unlabeled)
    assert fixmatch_test > 0.7 and supervised_test > 0.6  # both learn; the test split is too small to rank them
