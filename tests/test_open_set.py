"""Open-set domain adaptation (data.known_classes=K, model=osbp): the H-score and OSBP's boundary loss against
hand computations, the relabelled target, bad input, and open-set runs of OSBP and DANN (the baseline that
suffers negative transfer there) reporting known accuracy, unknown recall and H-score."""
from __future__ import annotations

import math

import pytest
import torch

from datamodules.errors import ConfigError
from test_domain_adaptation import TINY, train_in_process

PAIR = ["data=digits_to_digits_m", *TINY, "model.tsne=false", "trainer.max_epochs=1", "data.steps_per_epoch=2"]


def test_open_set_scores_and_boundary_loss_on_hand_cases():
    from lightning_modules.domain_adaptation import open_set_scores
    from lightning_modules.osbp import boundary_loss

    assert open_set_scores(torch.tensor([1.0, 0.5, 0.0])) == {"known_acc": 0.75, "unknown_recall": 0.0, "h_score": 0.0}
    scores = open_set_scores(torch.tensor([1.0, 1.0, 0.5]))
    assert scores["h_score"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    p = torch.tensor([0.5, 0.5], requires_grad=True)
    loss = boundary_loss(p, 0.5)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2)) and p.grad.abs().max() < 1e-6  # the boundary is the optimum
    assert boundary_loss(torch.tensor([0.9]), 0.5).item() > math.log(2)


def test_known_classes_relabel_the_target_and_bad_input(tmp_path):
    from conftest import compose
    from runner.build import build_datamodule

    datamodule = build_datamodule(compose("model=osbp", "data=digits_to_digits_m", "data.known_classes=6",
                                          run_dir=tmp_path))
    assert set(torch.as_tensor(datamodule.source.train.labels).tolist()) == set(range(6))
    assert set(torch.as_tensor(datamodule.target.test.labels).tolist()) == set(range(7))  # 6 = unknown
    assert datamodule.target.classes[-1] == "unknown" and datamodule.data_info["num_classes"] == 6
    with pytest.raises(ConfigError, match="needs target classes unknown to the source"):
        train_in_process(["model=osbp", *PAIR, "data.known_classes=10"], tmp_path / "all")
    with pytest.raises(ConfigError, match="model=osbp is for open-set adaptation"):
        train_in_process(["model=osbp", *PAIR], tmp_path / "closed")


@pytest.mark.parametrize("method", ["osbp", "dann"])
def test_open_set_runs_report_known_unknown_and_h_score(method, tmp_path):
    metrics = train_in_process([f"model={method}", *PAIR, "data.known_classes=6"], tmp_path)
    for key in ("known_acc", "unknown_recall", "h_score", "target_acc"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0
    assert "test/target_acc_class/unknown" in metrics


def test_osbp_calling_a_source_photo_unknown_counts_as_an_error_not_a_crash():
    from functools import partial

    import torch

    from lightning_modules.osbp import OSBP

    model = OSBP({"name": "lenet"}, num_classes=3, in_chans=1, optimizer=partial(torch.optim.Adam, lr=1e-3),
                 open_set=True).eval()
    with torch.no_grad():  # every photo's top output: the (K+1)-th, unknown
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    model.validation_step((x, y), 0, dataloader_idx=1)  # the source's validation loader
    assert model.eval_acc["val_source"].compute().item() == 0.0
