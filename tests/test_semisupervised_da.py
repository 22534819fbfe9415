"""Semi-supervised domain adaptation: k labeled target images per class (data.target_labels_per_class), the
S+T baseline (model=source_only) and MME (model=mme): the minimax gradients against hand computations, the
labeled split, bad input, and a fit of each."""
from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from test_domain_adaptation import TINY, train_in_process

PAIR = ["data=digits_to_digits_m", *TINY, "model.tsne=false", "trainer.max_epochs=1", "data.steps_per_epoch=2"]


def test_minimax_entropy_gradients_have_opposite_signs_for_classifier_and_features():
    from lightning_modules.components.domain import entropy, grad_reverse
    from lightning_modules.mme import CosineClassifier

    torch.manual_seed(0)
    head = CosineClassifier(4, 3, temperature=0.05)
    f = torch.randn(5, 4, requires_grad=True)
    logits = head(f)
    assert torch.allclose(logits, torch.nn.functional.normalize(f, dim=1)
                          @ torch.nn.functional.normalize(head.weight, dim=1).T / 0.05)
    lam = 0.1
    (-lam * entropy(head(grad_reverse(f)).softmax(1)).mean()).backward()  # MME's entropy term
    got_w, got_f = head.weight.grad.clone(), f.grad.clone()
    head.weight.grad, f.grad = None, None
    entropy(head(f).softmax(1)).mean().backward()  # dH/dW and dH/df
    assert torch.allclose(got_w, -lam * head.weight.grad, atol=1e-6)  # classifier: gradient ascent on H
    assert torch.allclose(got_f, lam * f.grad, atol=1e-6)  # features: gradient descent on H


def test_labeled_target_split_and_its_bad_inputs(tmp_path):
    from conftest import compose
    from runner.build import build_datamodule

    datamodule = build_datamodule(compose("model=source_only", "data=digits_to_digits_m",
                                          "data.target_labels_per_class=3", run_dir=tmp_path))
    labels = torch.as_tensor(datamodule.target_labeled.labels)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 3))
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"source", "target", "target_labeled"} and len(batch["target_labeled"][1]) == 30
    with pytest.raises(ConfigError, match="target_labels_per_class=500 is more than the target's smallest class"):
        train_in_process(["model=mme", *PAIR, "data.target_labels_per_class=500"], tmp_path / "many")
    with pytest.raises(ConfigError, match="DANN would ignore the labeled target images"):
        train_in_process(["model=dann", *PAIR, "data.target_labels_per_class=3"], tmp_path / "ignored")


@pytest.mark.parametrize("method", ["mme", "source_only"])
def test_semisupervised_methods_fit(method, tmp_path):
    metrics = train_in_process([f"model={method}", *PAIR, "data.target_labels_per_class=3"], tmp_path)
    assert 0.0 <= metrics["test/target_acc"] <= 1.0
