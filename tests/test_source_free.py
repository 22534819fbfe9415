"""Source-free domain adaptation (model=shot, aad, self_training): the losses against hand cases, the
target-only data (no source dataset, training labels never served), bad input, DDP, and adaptation
beating the unadapted source model on a shifted target."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import compose, read_results, train_in_process
from datamodules.errors import ConfigError
from lightning_modules.components.source_free import (
    aad_loss, centroid_pseudo_labels, information_maximization_loss, nearest_neighbours,
)

FAST = ("callbacks.progress_bar=null", "callbacks.learning_rate_monitor=null", "trainer.max_epochs=1",
        "trainer.limit_val_batches=2")


def test_information_maximization_on_hand_cases():
    confident_diverse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, ent, div = information_maximization_loss(confident_diverse)
    assert ent.item() == pytest.approx(0.0, abs=1e-6) and div.item() == pytest.approx(-math.log(2))
    assert loss.item() == pytest.approx(-math.log(2))  # the optimum: -H(uniform)
    unsure = torch.full((2, 2), 0.5)
    assert information_maximization_loss(unsure)[0].item() == pytest.approx(0.0, abs=1e-6)  # ln2 - ln2
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert information_maximization_loss(collapsed)[0].item() == pytest.approx(0.0, abs=1e-6)  # no diversity
    # pbar of the global batch (DDP) replaces the local mean
    assert information_maximization_loss(collapsed, torch.tensor([0.5, 0.5]))[2].item() == pytest.approx(-math.log(2))


def test_centroid_pseudo_labels_recover_clusters_from_noisy_predictions():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    truth = torch.arange(3).repeat_interleave(20)
    features = centres[truth] + 0.3 * torch.randn(60, 3, generator=g)
    probs = torch.full((60, 3), 0.1)
    probs[torch.arange(60), truth] = 0.8
    wrong = torch.arange(0, 60, 5)  # every fifth prediction points at the next class
    probs[wrong] = 0.1
    probs[wrong, (truth[wrong] + 1) % 3] = 0.8
    assert (probs.argmax(1) == truth).float().mean() == pytest.approx(0.8)
    assert torch.equal(centroid_pseudo_labels(features, probs), truth)  # the feature structure corrects them


def test_aad_attraction_and_dispersion_on_a_hand_case():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same_as_self = p.unsqueeze(1)  # K = 1 neighbour predicting what the image predicts
    loss, attraction, dispersion = aad_loss(p, same_as_self, alpha=1.0)
    assert attraction.item() == pytest.approx(-1.0) and dispersion.item() == pytest.approx(0.0)
    half = torch.full((2, 2), 0.5)
    loss, attraction, dispersion = aad_loss(half, half.unsqueeze(1), alpha=2.0)
    assert attraction.item() == pytest.approx(-0.5) and dispersion.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-0.5 + 2 * 0.5)
    # the global batch (DDP) holds the local rows too: p_i . p_i is still left out
    assert aad_loss(p, same_as_self, torch.cat([p, p]))[2].item() == pytest.approx(1.0)
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    assert nearest_neighbours(bank[:1], bank, 1, exclude=torch.tensor([0])).item() == 1  # itself excluded


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """A LeNet classifier trained on the embedded digits: the source model (its encoder.pt holds the head)."""
    run_dir = tmp_path_factory.mktemp("source")
    train_in_process("model=supervised", "data=digits", *FAST, run_dir=run_dir)
    return run_dir / "encoder.pt"


def test_the_run_sees_only_unlabeled_target_images(source_model, tmp_path):
    from runner.build import build_datamodule

    cfg = compose("model=shot", "data=digits_m", "data.channels=1", f"model.source_model={source_model}",
                  run_dir=tmp_path)
    assert set(cfg.data.dataset) >= {"name"} and "source" not in cfg.data  # one dataset: the target
    datamodule = build_datamodule(cfg)
    x, positions = next(iter(datamodule.train_dataloader()))
    labels = datamodule.split("train").labels
    assert positions.max() < len(labels) and len(set(positions.tolist())) == len(positions)
    assert not torch.equal(positions, torch.as_tensor(labels)[positions])  # positions, not labels
    images, order = zip(*[(a, b) for a, b in datamodule.unlabeled_loader()])
    assert torch.equal(torch.cat(order), torch.arange(len(labels)))


@pytest.mark.parametrize("method", ["shot", "aad", "self_training"])
def test_methods_fit_without_target_labels(method, source_model, tmp_path, monkeypatch):
    from datamodules.unlabeled import UnlabeledDataModule

    setup = UnlabeledDataModule.setup

    def setup_then_poison_train_labels(self, stage=None):  # a cross-entropy on class 999 of 10 would fail
        setup(self, stage)
        self.splits.train.labels = torch.full_like(torch.as_tensor(self.splits.train.labels), 999)

    monkeypatch.setattr(UnlabeledDataModule, "setup", setup_then_poison_train_labels)
    metrics, _ = train_in_process(f"model={method}", "data=digits_m", "data.channels=1",
                                  f"model.source_model={source_model}", *FAST, "trainer.limit_train_batches=3",
                                  run_dir=tmp_path)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["val/im"])
    assert read_results(tmp_path)["status"] == "completed"


def test_bad_input_fails_early(source_model, tmp_path):
    with pytest.raises(ConfigError, match="model.source_model is required"):
        train_in_process("model=shot", "data=digits", *FAST, run_dir=tmp_path / "none")
    with pytest.raises(ConfigError, match="does not take the target's 3x"):
        train_in_process("model=shot", "data=digits_m", f"model.source_model={source_model}", *FAST,
                         run_dir=tmp_path / "channels")
    five_classes = tmp_path / "five.npz"
    np.savez(five_classes, images=np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8),
             labels=np.arange(100) % 5)
    with pytest.raises(ConfigError, match="predicts 10 classes but the target data has 5"):
        train_in_process("model=shot", "data=npz", f"data.dataset.path={five_classes}",
                         f"model.source_model={source_model}", *FAST, run_dir=tmp_path / "classes")


def test_shot_under_ddp_labels_the_whole_target_from_both_processes(source_model, cli, tmp_path):
    cli("model=shot", "data=digits_m", "data.channels=1", f"model.source_model={source_model}", "trainer=ddp_cpu",
        *FAST, "trainer.limit_train_batches=2", run_dir=tmp_path, timeout=600)
    results = read_results(tmp_path)
    assert results["status"] == "completed" and results["config"]["trainer"]["devices"] == 2
    assert results["metrics"]["train/target_images"] == results["metrics"]["train/pseudo_labels"]
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
