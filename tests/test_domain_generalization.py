"""Domain generalization (data=multi / rotated_mnist; model=erm, dg_coral, dg_mmd, group_dro, irm): the rotated
domains, leave-one-domain-out never loading the held-out domain while training, the penalties against hand
computations, bad input, a smoke fit of each method and GroupDRO under DDP."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose, read_results, train_in_process
from datamodules.errors import ConfigError

FAST = ("callbacks.progress_bar=null", "callbacks.learning_rate_monitor=null", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
THREE = ("data=multi", "+data.domains.a={name:digits}", "+data.domains.b={name:digits_m}",
         "+data.domains.c={name:digits}", "data.test_domain=c", "data.channels=1")


def test_rotated_domains_are_disjoint_rotations(shared_data):
    from datamodules.registry import DATASETS

    path = str(shared_data / "mnist_test.npz")
    parts = [DATASETS["rotated_mnist"](path=path, angle=0, shard=s, shards=3) for s in range(3)]
    sizes = [len(p.splits["all"][1]) for p in parts]
    assert sum(sizes) == 10_000 and max(sizes) - min(sizes) <= 1
    flat = [p.splits["all"][0].flatten(1) for p in parts]
    assert not (torch.cdist(flat[0][:200].float(), flat[1][:200].float()) == 0).any()  # different digits
    turned = DATASETS["rotated_mnist"](path=path, angle=90, shard=1, shards=3).splits["all"][0]
    expected = torch.rot90(parts[1].splits["all"][0], 1, (-2, -1))  # counter-clockwise, as torchvision
    assert (turned.float() - expected.float()).abs().mean() < 1.0
    with pytest.raises(ConfigError, match="shard=3 must lie in"):
        DATASETS["rotated_mnist"](path=path, shard=3, shards=3)


def test_leave_one_out_never_loads_the_held_out_domain_while_training(tmp_path, monkeypatch):
    import datamodules.multi as multi
    from runner.build import build_datamodule

    loaded = []
    real = multi.load_dataset
    monkeypatch.setattr(multi, "load_dataset", lambda spec, where, **kw: loaded.append(where) or real(spec, where=where, **kw))
    datamodule = build_datamodule(compose("model=erm", *THREE, run_dir=tmp_path))  # setup("fit")
    assert loaded == ["data.domains.a", "data.domains.b"] and "c" not in datamodule.domains
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"a", "b"} and all(len(batch[d]) == 2 for d in batch)
    datamodule.setup("test")
    assert loaded[-1] == "data.domains.c" and len(datamodule.test_dataloader().dataset) > 0


def test_bad_input_fails_early(tmp_path):
    with pytest.raises(ConfigError, match="at least two"):
        train_in_process("model=erm", "data=multi", "+data.domains.a={name:digits}", "data.test_domain=a", *FAST,
                         run_dir=tmp_path / "one")
    with pytest.raises(ConfigError, match=r"data.test_domain='r90' is not one of data.domains: \['r0', 'r15'"):
        train_in_process("model=erm", "data=rotated_mnist", "data.test_domain=r90", *FAST, run_dir=tmp_path / "name")
    with pytest.raises(ConfigError, match="several domains"):
        train_in_process("model=supervised", *THREE, *FAST, run_dir=tmp_path / "single")


def test_penalties_and_weights_on_hand_cases():
    from lightning_modules.dg_alignment import coral_penalty, mmd_penalty
    from lightning_modules.irm import irm_penalty

    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    assert coral_penalty(x, x).item() == 0.0 and mmd_penalty(x, x).item() == pytest.approx(0.0, abs=1e-6)
    shifted = x + 1.0  # means differ by 1 in each of 4 dims, covariances equal
    assert coral_penalty(x, shifted).item() == pytest.approx(1.0, abs=1e-5)
    z = torch.tensor([[2.0, 0.0], [0.5, 1.0], [1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 0, 1])

    def slope(z, y):  # d/ds CE(s z, y) at s = 1 = mean_i (softmax(z_i) . z_i - z_i[y_i])
        return float((F.softmax(z, 1) * z).sum(1).sub(z[torch.arange(len(y)), y]).mean())

    assert irm_penalty(z, y).item() == pytest.approx(slope(z[::2], y[::2]) * slope(z[1::2], y[1::2]), rel=1e-5)


def test_group_dro_weights_the_harder_domain_up():
    from lightning_modules.group_dro import GroupDRO

    model = GroupDRO({"name": "lenet"}, 10, 1, {"_target_": "torch.optim.SGD", "lr": 0.1}, num_domains=2, eta=1.0)
    out = model.objective([], [], [], torch.tensor([1.0, 2.0]))
    expected = torch.tensor([math.e, math.e ** 2]) / (math.e + math.e ** 2)
    assert torch.allclose(model.q, expected) and out["train/loss"].item() == pytest.approx(float(expected @ torch.tensor([1.0, 2.0])))


@pytest.mark.parametrize("method", ["erm", "dg_coral", "dg_mmd", "group_dro", "irm"])
def test_each_method_fits_on_three_domains(method, tmp_path):
    metrics, _ = train_in_process(f"model={method}", *THREE, *FAST, run_dir=tmp_path)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["train/loss"])
    assert read_results(tmp_path)["status"] == "completed"


def test_group_dro_under_ddp(cli, tmp_path):
    cli("model=group_dro", *THREE, "trainer=ddp_cpu", *FAST, run_dir=tmp_path, timeout=600)
    results = read_results(tmp_path)
    assert results["status"] == "completed" and results["config"]["trainer"]["devices"] == 2
    assert 0.5 <= results["metrics"]["train/q_max"] <= 1.0


def test_m3sda_moment_distance_and_the_unlabeled_target(tmp_path):
    from lightning_modules.m3sda import moment_distance

    a = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1), second moment (2, 2)
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # mean (1, 1), second moment (1, 1)
    assert moment_distance([a, a], a).item() == 0.0
    # k=1: all means equal -> 0; k=2: |(2,2)-(1,1)| = sqrt 2 between the sources and from source a to the target b
    assert moment_distance([a, b], b).item() == pytest.approx(math.sqrt(2) / 2 + math.sqrt(2))
    metrics, _ = train_in_process("model=m3sda", *THREE, *FAST, run_dir=tmp_path / "fit")
    assert math.isfinite(metrics["train/moment_distance"]) and 0.0 <= metrics["test/acc"] <= 1.0
    with pytest.raises(ConfigError, match="data.unlabeled_target=true"):
        train_in_process("model=m3sda", *THREE, *FAST, "data.unlabeled_target=false", run_dir=tmp_path / "none")
