"""Transfer learning: encoder hand-off, fine-tuning strategies, pretrained files, distillation."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.errors import ConfigError
from datamodules.labeled import LabeledDataModule
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.distillation import (angle_potential, hint_loss, kd_loss, rkd_angle_loss,
                                                       rkd_distance_loss, soft_target_kl)
from lightning_modules.components.encoder_io import read_checkpoint
from lightning_modules.distill import Distill
from lightning_modules.components.stages import backbone_stages, stage_output_modules
from lightning_modules.finetune import Finetune
from tests.conftest import read_results, run_cli

ADAM = functools.partial(torch.optim.Adam, lr=1e-2)
SMALL = {"name": "small_cnn", "widths": [8, 16, 32]}


def digits(num_labels=None, **kw) -> LabeledDataModule:
    dm = LabeledDataModule({"name": "digits"}, num_labels=num_labels, image_size=16, batch_size=32, **kw)
    dm.setup("fit")
    return dm


def fit(module, dm, steps: int = 4) -> None:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A tiny supervised small_cnn (with BatchNorm) trained by run.py: writes encoder.pt and last.ckpt."""
    run_dir = tmp_path_factory.mktemp("source")
    run_cli("model=supervised", "data=digits", "debug=smoke", "model.input.image_size=16",
            "model.backbone.name=small_cnn", "+model.backbone.widths=[8,16,32]", run_dir=run_dir)
    return run_dir


# ------------------------------------------------------------------------------------------------
# losses


def test_kd_loss_matches_direct_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5) * 3, torch.randint(0, 5, (6,))
    temperature, alpha = 3.0, 0.7
    p_t, p_s = torch.softmax(t / temperature, 1), torch.softmax(s / temperature, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(6), y].mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    assert torch.allclose(soft_target_kl(s, t, temperature), kl, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, y, temperature, alpha), expected, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, y, temperature, 0.0), ce, atol=1e-6)
    assert kd_loss(t, t, y, temperature, 1.0).abs() < 1e-6  # student = teacher: no soft loss
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(hint_loss(a, b), 0.5 * ((a - b) ** 2).mean())


def test_rkd_losses_against_a_hand_computation():
    """Teacher: the 3-4-5 right triangle; student: the unit right isoceles triangle (Park et al. 2019)."""
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # distance-wise: distances / their mean over the 6 ordered pairs i != j (teacher mean 4)
    psi_t = torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]]) / 4.0
    r2 = 2**0.5
    psi_s = torch.tensor([[0, 1, 1], [1, 0, r2], [1, r2, 0]]) / ((2 + r2) / 3)
    diff = (psi_s - psi_t).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    assert torch.allclose(rkd_distance_loss(student, teacher), huber.mean(), atol=1e-6)
    # angle-wise: cos of the angle at vertex j; teacher 0 / 0.6 / 0.8 at vertices 0 / 1 / 2, student 0 / .707 / .707
    psi = angle_potential(teacher)
    assert torch.isclose(psi[1, 0, 2], torch.tensor(0.6)) and torch.isclose(psi[2, 0, 1], torch.tensor(0.8))
    assert torch.isclose(psi[0, 1, 2], torch.tensor(0.0), atol=1e-6)
    # two ordered triplets (i, k) at each of vertices 1 and 2 differ; every other entry agrees
    expected = 2 * (0.5 * (0.6 - 1 / r2) ** 2 + 0.5 * (0.8 - 1 / r2) ** 2) / 27
    assert torch.allclose(rkd_angle_loss(student, teacher), torch.tensor(expected), atol=1e-6)
    # relations, not coordinates: a scaled, rotated, shifted copy of the teacher costs nothing
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    copy = 7.0 * teacher @ rotation + 2.0
    assert rkd_distance_loss(copy, teacher) < 1e-6 and rkd_angle_loss(copy, teacher) < 1e-6


def test_kd_loss_hard_term_reads_only_the_labeled_rows():
    """With a transfer set of labeled + unlabeled rows, the soft term covers all rows, CE the first ones."""
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (2,))
    expected = 0.5 * 4.0 * soft_target_kl(s, t, 2.0) + 0.5 * F.cross_entropy(s[:2], y)
    assert torch.allclose(kd_loss(s, t, y, 2.0, 0.5), expected)


# ------------------------------------------------------------------------------------------------
# stages, labels


def test_stages_are_timm_groups():
    assert [len(s) for s in backbone_stages(create_backbone("lenet", in_chans=1))] == [2, 2, 2]
    assert stage_output_modules(create_backbone("lenet", in_chans=1)) == ["stages.0", "stages.1", "fc"]
    assert stage_output_modules(create_backbone("small_cnn", in_chans=1)) == ["stages.0", "stages.1", "stages.2"]
    resnet = stage_output_modules(create_backbone("resnet18_cifar", in_chans=3))
    assert resnet == ["bn1", "layer1", "layer2", "layer3", "layer4"]


def test_num_labels_is_a_class_balanced_seeded_subset():
    dm = digits(num_labels=50)
    assert len(dm.splits.train) == 50
    assert torch.bincount(dm.splits.train.labels).tolist() == [5] * 10
    assert torch.equal(digits(num_labels=50).splits.train.images, dm.splits.train.images)
    assert len(dm.splits.val) == len(digits().splits.val)  # val/test untouched
    with pytest.raises(ConfigError, match="num_labels=5 must lie between"):
        digits(num_labels=5)


# ------------------------------------------------------------------------------------------------
# encoder hand-off and strategies


def test_linear_run_keeps_the_exported_encoder_bit_for_bit(source_run, tmp_path):
    """run 1 exports encoder.pt; run 2 (linear) loads it: backbone weights and BN stats unchanged."""
    run_cli("model=finetune", "data=digits", "debug=smoke", "model.input.image_size=16", "model.strategy=linear",
            "model.backbone.name=small_cnn", "+model.backbone.widths=[8,16,32]",
            f"model.backbone.checkpoint={source_run / 'encoder.pt'}", run_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "completed"
    before, after = read_checkpoint(source_run / "encoder.pt"), read_checkpoint(tmp_path / "encoder.pt")
    assert any("running_mean" in k for k in before["state_dict"])
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), key
    assert after["head"] is not None and not torch.equal(before["head"]["weight"], after["head"]["weight"])


@pytest.mark.parametrize("checkpoint", ["encoder.pt", "checkpoints/last.ckpt"])
def test_partial_trains_only_the_last_stages(source_run, checkpoint):
    dm = digits()
    module = Finetune({**SMALL, "checkpoint": str(source_run / checkpoint)}, 10, 1, ADAM,
                      strategy="partial", trainable_stages=1)
    start = snapshot(module.backbone)
    assert torch.equal(start["stages.0.0.0.weight"], read_checkpoint(source_run / "encoder.pt")["state_dict"]["stages.0.0.0.weight"])
    fit(module, dm)
    end = snapshot(module.backbone)
    for key in start:
        changed = not torch.equal(start[key], end[key])
        assert changed == key.startswith("stages.2."), key  # weights and BN statistics of stages 0-1 frozen
    lrs = sorted(group["lr"] for group in module.trainer.optimizers[0].param_groups)
    assert lrs == pytest.approx([1e-3, 1e-2])  # backbone at backbone_lr_mult x lr


def test_full_trains_everything_and_linear_freezes_bn_in_process(source_run):
    dm = digits()
    full = Finetune({**SMALL, "checkpoint": str(source_run / "encoder.pt")}, 10, 1, ADAM, strategy="full")
    start = snapshot(full.backbone)
    fit(full, dm)
    assert all(not torch.equal(v, full.backbone.state_dict()[k]) for k, v in start.items()
               if "num_batches" not in k and not k.startswith("input_norm."))  # fixed input normalisation
    linear = Finetune({**SMALL, "checkpoint": str(source_run / "encoder.pt")}, 10, 1, ADAM, strategy="linear")
    start, head = snapshot(linear.backbone), snapshot(linear.classifier)
    fit(linear, dm)
    assert not linear.backbone.training
    assert all(torch.equal(v, linear.backbone.state_dict()[k]) for k, v in start.items())
    assert not torch.equal(head["weight"], linear.classifier.weight)


def test_finetune_on_an_imagefolder(source_run, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("crab", "eel"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    dm = LabeledDataModule({"name": "imagefolder", "root": str(tmp_path)}, image_size=16, channels=1, batch_size=4)
    dm.setup("fit")
    module = Finetune({**SMALL, "checkpoint": str(source_run / "encoder.pt")}, dm.data_info["num_classes"], 1, ADAM,
                      strategy="linear")
    fit(module, dm, steps=2)
    assert module.classifier.out_features == 2


def test_bad_options_fail_clearly(source_run):
    with pytest.raises(ConfigError, match="model.strategy='last'.*choices"):
        Finetune(SMALL, 10, 1, ADAM, strategy="last")
    with pytest.raises(ConfigError, match=r"trainable_stages=4 must lie in \[1, 3\]"):
        Finetune(SMALL, 10, 1, ADAM, strategy="partial", trainable_stages=4)


# ------------------------------------------------------------------------------------------------
# wrong checkpoints


def test_wrong_checkpoints_fail_with_clear_errors(source_run, tmp_path):
    encoder = str(source_run / "encoder.pt")
    with pytest.raises(ConfigError, match="checkpoint=.*missing.pt: no such file"):
        create_backbone("small_cnn", in_chans=1, checkpoint=str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(Path(encoder).read_bytes()[:200])
    with pytest.raises(ConfigError, match="checkpoint=.*corrupt.pt: not a readable PyTorch checkpoint"):
        create_backbone("small_cnn", in_chans=1, checkpoint=str(corrupt))
    with pytest.raises(ConfigError, match="holds a 'small_cnn' encoder but model.backbone.name='lenet'"):
        create_backbone("lenet", in_chans=1, checkpoint=encoder)
    with pytest.raises(ConfigError, match=r"shape mismatches \(e.g. stages.0.0.0.weight: file \("):
        create_backbone("small_cnn", in_chans=1, checkpoint=encoder, widths=[4, 16, 32])
    bare = tmp_path / "resnet_state.pt"
    torch.save(create_backbone("resnet18_cifar", in_chans=1).state_dict(), bare)
    with pytest.raises(ConfigError, match="does not fit the backbone: missing"):
        create_backbone("small_cnn", in_chans=1, checkpoint=str(bare))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Path("x")}, pickled)  # an arbitrary Python object: refused by weights_only
    with pytest.raises(ConfigError, match="pickled.pt: refused.*weights_only=True.*nothing in it was run"):
        create_backbone("small_cnn", in_chans=1, checkpoint=str(pickled))


# ------------------------------------------------------------------------------------------------
# timm pretrained_cfg_overlay from a local file


def test_pretrained_file_loads_through_timm_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = create_backbone("small_cnn", in_chans=1, widths=[8, 16, 32])
    torch.nn.init.normal_(source.stages[0][0][0].weight)
    state = {**source.state_dict(), "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = create_backbone("small_cnn", in_chans=1, widths=[8, 16, 32], pretrained_file=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(ConfigError, match="pretrained_file=.*no such file"):
        create_backbone("small_cnn", in_chans=1, pretrained_file=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="pretrained_file=.*does not fit the backbone: missing"):
        create_backbone("lenet", in_chans=1, pretrained_file=str(path))  # timm alone would load it non-strictly
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ConfigError, match="pretrained_file=.*corrupt.pth: not a readable PyTorch checkpoint"):
        create_backbone("small_cnn", in_chans=1, widths=[8, 16, 32], pretrained_file=str(corrupt))


# ------------------------------------------------------------------------------------------------
# distillation


@pytest.mark.parametrize("checkpoint", ["encoder.pt", "checkpoints/last.ckpt"])
def test_distill_teacher_is_frozen_and_in_eval_mode(source_run, checkpoint):
    dm = digits()
    module = Distill({"name": "lenet"}, {"checkpoint": str(source_run / checkpoint)}, 10, 1, 16, ADAM,
                     hint={"weight": 1.0})
    teacher = snapshot(module.teacher)
    student = snapshot(module.backbone)
    fit(module, dm)
    assert not module.teacher.training and not any(m.training for m in module.teacher.modules())
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher.items())  # BN stats too
    assert any(not torch.equal(v, module.backbone.state_dict()[k]) for k, v in student.items())
    # hint: lenet's middle stage (20 maps) regressed onto small_cnn's middle stage (16 maps)
    assert isinstance(module.regressor, torch.nn.Conv2d)
    assert (module.regressor.in_channels, module.regressor.out_channels) == (50, 16)
    # the teacher is the source classifier: same predictions as the model that wrote the file
    x = dm.splits.val[0][0][None]
    source = read_checkpoint(source_run / "encoder.pt")
    reference = create_backbone("small_cnn", in_chans=1, widths=[8, 16, 32]).eval()
    reference.load_state_dict(source["state_dict"])
    expected = F.linear(reference(x), source["head"]["weight"], source["head"]["bias"])
    assert torch.allclose(module.teacher(x), expected, atol=1e-5)


def test_distill_relation_terms_train_the_student_from_a_wider_teacher(source_run):
    """RKD compares embeddings of different widths (student 32, teacher small_cnn 32 / lenet 500)."""
    dm = digits()
    module = Distill({"name": "lenet"}, {"checkpoint": str(source_run / "encoder.pt")}, 10, 1, 16, ADAM,
                     relation={"distance": 25.0, "angle": 50.0})
    x, y = next(iter(dm.train_dataloader()))
    terms = module.relation_terms(module.backbone(x), module.teacher.backbone(x))
    assert set(terms) == {"rkd_distance", "rkd_angle"} and all(t > 0 for t in terms.values())
    student = snapshot(module.backbone)
    fit(module, dm)
    assert any(not torch.equal(v, module.backbone.state_dict()[k]) for k, v in student.items())


def test_a_timm_teacher_gets_its_weights_input_normalisation(tmp_path):
    """A timm classifier given as teacher takes the project's [-1, 1] images through its pretrained_cfg's
    mean/std, and keeps its trained head as the classifier after the embedding."""
    import timm

    from lightning_modules.distill import teacher_from_timm

    net = timm.create_model("mobilenetv3_small_050", in_chans=3)  # ImageNet mean / std, 1,000 classes
    weights = tmp_path / "teacher.pth"
    torch.save(net.state_dict(), weights)
    teacher = teacher_from_timm("mobilenetv3_small_050", 3, False, str(weights)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    expected = net.eval()(((x + 1) / 2 - mean) / std)
    assert torch.allclose(teacher(x), expected, atol=1e-4)
    assert teacher.backbone(x).shape == (2, net.get_classifier().in_features)  # the embedding before the head


def test_distill_bad_teachers_fail_clearly(source_run, tmp_path):
    with pytest.raises(ConfigError, match="needs a teacher"):
        Distill(SMALL, {}, 10, 1, 16, ADAM)
    with pytest.raises(ConfigError, match="predicts 10 classes but the data has 3"):
        Distill(SMALL, {"checkpoint": str(source_run / "encoder.pt")}, 3, 1, 16, ADAM)
    headless = tmp_path / "headless.pt"
    state = read_checkpoint(source_run / "encoder.pt")
    torch.save({"format": "transferlab-encoder", "name": "small_cnn", "spec": state["spec"], "input": {},
                "state_dict": state["state_dict"]}, headless)
    with pytest.raises(ConfigError, match="holds no classifier head"):
        Distill(SMALL, {"checkpoint": str(headless)}, 10, 1, 16, ADAM)
    with pytest.raises(ConfigError, match="alpha=1.5"):
        Distill(SMALL, {"checkpoint": str(source_run / "encoder.pt")}, 10, 1, 16, ADAM, alpha=1.5)


def test_distill_with_unlabeled_transfer_set(source_run):
    """SemiSupervisedDataModule: the teacher's soft targets cover the unlabeled images, whose labels
    never reach the batch; the student learns and the hard term sees the labeled part only."""
    from datamodules.semisup import SemiSupervisedDataModule
    from lightning_modules.distill import transfer_set

    dm = SemiSupervisedDataModule({"name": "digits"}, num_labels=50, image_size=16, batch_size=16,
                                  unlabeled_batch_size=32, unlabeled_eval=False)
    dm.setup("fit")
    module = Distill({"name": "small_cnn", "widths": [8, 16, 32]}, {"checkpoint": str(source_run / "encoder.pt")},
                     10, 1, 16, ADAM)
    batch = next(iter(dm.train_dataloader()))[0]
    x, y = transfer_set(batch)
    assert x.shape[0] == 16 + 32 and y.shape == (16,)
    student = snapshot(module.backbone)
    fit(module, dm)
    assert any(not torch.equal(v, module.backbone.state_dict()[k]) for k, v in student.items())
    assert len(dm.val_dataloader()) == 1  # unlabeled_eval=false: only the val split is scored

