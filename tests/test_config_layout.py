"""The configuration layout: protocol presets that combine with any method, the optimizer group, every
DataModule option under `data`, the method's declared input, and the earlier command-line forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import run
from runner.build import datamodule_options
from conftest import CONF_DIR, compose, run_cli
from datamodules.errors import ConfigError

DA_METHODS = ["source_only", "dann", "adda", "drcn", "dan", "coral", "target_oracle"]


@pytest.mark.parametrize("method", DA_METHODS)
def test_one_protocol_preset_serves_every_domain_adaptation_method(method):
    """experiment=mnist_usps model=M gives what the per-method preset gave: Adam 1e-3, batch 64, 50 x 20 steps."""
    cfg = compose("experiment=mnist_usps", f"model={method}")
    assert cfg.model._target_.split(".")[1] == method
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 0.001
    assert (cfg.data.batch_size, cfg.data.steps_per_epoch, cfg.trainer.max_epochs) == (64, 50, 20)
    assert (cfg.data.image_size, cfg.data.channels) == (28, 1)
    assert method in OmegaConf.to_container(cfg, resolve=True)["tags"]


def test_a_method_delta_applies_only_to_its_method_and_protocol():
    dan = compose("experiment=digits_digits_m", "model=dan")
    assert dan.model.normalize is True and dan.model.trade_off == 100.0
    assert compose("experiment=mnist_usps", "model=dan").model.normalize is False
    assert compose("model=dan").model.normalize is True  # the default the mnist_usps delta undoes
    moco = compose("experiment=ssl_digits_m", "model=moco")
    assert (moco.model.queue_size, moco.trainer.max_epochs) == (512, 400)
    assert compose("experiment=ssl_digits_m", "model=simclr").trainer.max_epochs == 200


def test_command_line_overrides_win_over_protocol_and_delta():
    cfg = compose("experiment=digits_digits_m", "model=dan", "model.trade_off=3", "optimizer=sgd", "data.batch_size=32")
    assert cfg.model.trade_off == 3 and cfg.model.optimizer._target_ == "torch.optim.SGD"
    assert cfg.data.batch_size == 32


def test_experiment_folder_holds_protocols_not_method_copies():
    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert len(presets) <= 19, presets  # a third of the 59 per-method presets it replaced
    for method in DA_METHODS + ["simclr", "moco", "rotation"]:
        assert not any(p.startswith(f"{method}_") for p in presets), presets


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("lars", None)])
def test_optimizer_group_builds_each_optimizer(name, cls):
    cfg = compose("model=simclr", f"optimizer={name}")
    node = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    node.pop("_partial_", None)
    optimizer = instantiate(node, params=[torch.nn.Parameter(torch.zeros(3))])
    if cls is None:
        import timm.optim

        cls = timm.optim.Lars
    assert type(optimizer) is cls and optimizer.defaults["lr"] == node["lr"]


def test_method_file_states_only_the_lr_it_needs_over_the_group():
    cfg = compose("model=dann")  # the domain-adaptation family's mu_0 over the adam group
    assert (cfg.model.optimizer._target_, cfg.model.optimizer.lr) == ("torch.optim.Adam", 0.001)
    assert "momentum" not in cfg.model.optimizer  # no SGD option left over to break Adam
    cfg = compose("model=dann", "optimizer=sgd", "model.optimizer.lr=0.01")  # the paper's optimizer
    assert (cfg.model.optimizer._target_, cfg.model.optimizer.lr, cfg.model.optimizer.momentum) == (
        "torch.optim.SGD", 0.01, 0.9)


def test_the_self_supervised_default_encoder_is_the_narrow_cnn_and_a_foreign_backbone_option_is_named():
    from lightning_modules.components.backbones import create_backbone

    assert compose("model=simclr").model.backbone.name == "small_cnn_narrow"
    assert create_backbone("small_cnn_narrow", in_chans=3).num_features == 64  # 16-32-64 channels
    # a preset's small_cnn `widths` left behind after switching the network: named, not a TypeError
    with pytest.raises(ConfigError, match=r"model.backbone.widths=\[16, 32, 64\] does not apply to .*resnet18_cifar"):
        create_backbone("resnet18_cifar", in_chans=1, widths=[16, 32, 64])


def test_datamodule_options_live_under_data():
    cfg = compose("model=pseudolabel", "data=digits", "data.num_labels=1000", "data.unlabeled_batch_size=64")
    options = datamodule_options(cfg)
    assert options["num_labels"] == 1000 and options["unlabeled_batch_size"] == 64
    cfg = compose("model=simclr", "data.augment.flip_p=0", "data.n_views=2")
    assert datamodule_options(cfg)["augment"]["flip_p"] == 0


def test_an_option_of_another_batch_shape_is_an_error_naming_the_valid_ones():
    cfg = compose("model=supervised", "+data.n_views=2")
    with pytest.raises(ConfigError, match=r"data.n_views is not an option of model=supervised .*num_labels"):
        datamodule_options(cfg)


def test_schedules_are_fractions_of_the_run():
    cfg = compose("model=pseudolabel")
    assert 0 <= cfg.model.t1 < cfg.model.t2 <= 1
    from lightning_modules.pseudolabel import PseudoLabel

    with pytest.raises(ConfigError, match="fractions of the run"):
        PseudoLabel({"name": "lenet"}, 10, 1, optimizer=None, t1=100, t2=600)


def write_npz(path, size, n=40):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, size, size), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


def test_the_backbone_declared_input_size_applies_to_pairs_of_other_sizes(tmp_path):
    """LeNet declares 28x28: a 16 px and a 20 px domain are both resized to it without data.image_size."""
    src, tgt = write_npz(tmp_path / "s.npz", 16), write_npz(tmp_path / "t.npz", 20)
    cfg = compose("model=dann", "data=pair", "data.source.name=npz", f"+data.source.path={src}",
                  "data.target.name=npz", f"+data.target.path={tgt}")
    assert cfg.data.image_size is None and datamodule_options(cfg)["image_size"] == 28
    cfg = compose("model=dann", "model.backbone.name=small_cnn", "data=pair", "data.source.name=npz",
                  f"+data.source.path={src}", "data.target.name=npz", f"+data.target.path={tgt}")
    assert datamodule_options(cfg)["image_size"] is None  # small_cnn takes any size: native
    cfg = compose("model=dann", "data=pair", "data.image_size=32", "data.source.name=npz",
                  f"+data.source.path={src}", "data.target.name=npz", f"+data.target.path={tgt}")
    assert datamodule_options(cfg)["image_size"] == 32  # the user's choice wins


@pytest.mark.parametrize("old,new", [
    ("experiment=dann_mnist_usps", "experiment=mnist_usps model=dann"),
    ("experiment=coral_digits", "experiment=digits_digits_m model=coral"),
    ("experiment=simclr_digits_m", "experiment=ssl_digits_m model=simclr"),
    ("experiment=moco_mnist", "experiment=ssl_mnist model=moco"),
    ("model.datamodule.num_labels=1000", "data.num_labels"),
])
def test_earlier_forms_name_the_new_one(old, new):
    assert new in run.legacy_form_error([old])


def test_current_forms_are_not_taken_for_earlier_ones():
    for args in (["experiment=mnist_usps", "model=dann"], ["experiment=ddpm_digits"], ["experiment=ssl_mnist"],
                 ["model.datamodule._target_=datamodules.semisup.SemiSupervisedDataModule"]):
        assert run.legacy_form_error(args) is None, args


def test_an_earlier_form_fails_at_once_on_the_command_line(tmp_path):
    proc = run_cli("experiment=dann_mnist_usps", run_dir=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2 and "experiment=mnist_usps model=dann" in proc.stderr
    assert not any(tmp_path.iterdir())
