"""Options of the discrepancy methods: DAN's linear-time MK-MMD estimator (Eq. 6), its test-power kernel
weights (Sec. 3.3) and the bottleneck layer of DAN / CORAL."""
from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.components.domain import linear_time_terms, mk_mmd2, mk_mmd2_linear, max_power_kernel_weights
from lightning_modules.coral import CORAL
from lightning_modules.dan import DAN

BACKBONE = {"name": "lenet", "pretrained": False}


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def test_linear_mmd_matches_its_formula_on_one_quad_tuple():
    # one tuple: xs = (0, 1), xt = (3, 5); one kernel exp(-d^2 / 2)
    xs, xt = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [5.0]])
    k = lambda d: torch.exp(torch.tensor(-d * d / 2.0))  # noqa: E731
    # g = k(xs1, xs2) + k(xt1, xt2) - k(xs1, xt2) - k(xs2, xt1)
    expected = k(1.0) + k(2.0) - k(5.0) - k(2.0)
    assert mk_mmd2_linear(xs, xt, kernel_num=1, bandwidth=2.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_linear_mmd_is_unbiased_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    same = torch.stack([mk_mmd2_linear(torch.randn(64, 4, generator=g), torch.randn(64, 4, generator=g),
                                       bandwidth=8.0) for _ in range(300)])
    # unbiased: the mean over draws of one law is ~0 (the quadratic estimate is > 0 by construction)
    assert abs(same.mean().item()) < 3 * same.std().item() / 300**0.5
    x, y = torch.randn(256, 4, generator=g), torch.randn(256, 4, generator=g)
    shifted = [mk_mmd2_linear(x, y + s, bandwidth=8.0).item() for s in (0.0, 1.0, 3.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    # same population quantity as the quadratic estimate, up to the quadratic one's bias
    assert shifted[2] == pytest.approx(mk_mmd2(x, y + 3.0, bandwidth=8.0).item(), abs=0.05)
    with pytest.raises(ValueError, match="at least 2"):
        mk_mmd2_linear(x[:1], y[:1])


def test_dan_estimator_option_is_checked_and_used():
    with pytest.raises(ConfigError, match="model.estimator"):
        DAN(BACKBONE, 10, 3, adam, estimator="cubic")
    dan = DAN(BACKBONE, 10, 3, adam, estimator="linear")
    x, y = torch.randn(8, 5), torch.randn(8, 5) + 1
    assert torch.equal(dan.discrepancy(x, y), mk_mmd2_linear(x, y))


def _qp_reference(g: torch.Tensor, ridge: float = 1e-3):
    """The same QP solved by a general solver: min b^T A b s.t. d^T b = 1, b >= 0, then b / sum(b)."""
    import numpy as np
    from scipy.optimize import minimize

    g = g.double().numpy()
    g = g / np.abs(g.mean(1)).max()  # the normalised weights do not depend on the scale; the solver does
    d, q = g.mean(1), np.cov(g)
    a = q + ridge * q.diagonal().mean() * np.eye(len(d))
    res = minimize(lambda b: b @ a @ b, np.full(len(d), 1.0 / d.max() / len(d)), jac=lambda b: 2 * a @ b,
                   constraints=[{"type": "eq", "fun": lambda b: d @ b - 1, "jac": lambda b: d}],
                   bounds=[(0, None)] * len(d), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x / res.x.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_power_kernel_weights_solve_the_papers_qp(seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(128, 6, generator=gen), torch.randn(128, 6, generator=gen) * 1.5 + 0.8
    g = linear_time_terms(x, y, kernel_num=5)
    beta = max_power_kernel_weights(g)
    assert beta.min() >= 0 and beta.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert beta.numpy() == pytest.approx(_qp_reference(g), abs=1e-4)


def test_max_power_kernel_weights_pick_the_informative_kernel_or_fall_back_to_equal():
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 400, generator=gen)
    g = torch.stack([noise[0] * 0.1, 0.5 + noise[1] * 0.1, noise[2] * 0.1])  # only kernel 1 sees a difference
    beta = max_power_kernel_weights(g)
    assert beta[1] > 0.9
    flat = max_power_kernel_weights(-torch.ones(3, 10) + 0.01 * torch.randn(3, 10, generator=gen))  # no positive MMD^2
    assert torch.allclose(flat, torch.full((3,), 1 / 3))


def test_dan_test_power_option_uses_those_weights():
    with pytest.raises(ConfigError, match="model.kernel_weights"):
        DAN(BACKBONE, 10, 3, adam, kernel_weights="learned")
    dan = DAN(BACKBONE, 10, 3, adam, kernel_weights="test_power")
    x, y = torch.randn(16, 5), torch.randn(16, 5) * 2 + 1
    beta = max_power_kernel_weights(linear_time_terms(x, y))
    assert torch.allclose(dan.discrepancy(x, y), mk_mmd2(x, y, weights=beta))
    assert not torch.allclose(beta, torch.full((5,), 0.2))
    # equal weights reproduce the default family exactly
    assert torch.allclose(mk_mmd2(x, y, weights=torch.full((5,), 0.2)), mk_mmd2(x, y))
    assert torch.allclose(mk_mmd2_linear(x, y, weights=torch.full((5,), 0.2)), mk_mmd2_linear(x, y))


def test_bottleneck_sits_between_backbone_and_classifier_and_can_be_adapted():
    with pytest.raises(ConfigError, match="model.bottleneck"):
        CORAL(BACKBONE, 10, 3, adam, layers=["bottleneck"])
    plain = CORAL(BACKBONE, 10, 3, adam)
    assert plain.bottleneck is None and plain.classifier.in_features == 500
    model = DAN(BACKBONE, 10, 3, adam, bottleneck=32, layers=["bottleneck", "logits"]).eval()
    x = torch.randn(4, 3, 28, 28)
    feats = model.features(x, "target")
    assert feats.shape == (4, 32) and model.classifier.in_features == 32
    assert torch.allclose(model(x), model.classifier(feats))
    # training adapts the named layers: the discrepancy sees the bottleneck and the logits
    widths = []

    def discrepancy(source, target):
        widths.append((source.shape, target.shape))
        return (source.mean() - target.mean()) ** 2

    model.train()
    model.discrepancy, model.log_train = discrepancy, lambda *a, **k: None
    batch = {"source": (torch.randn(6, 3, 28, 28), torch.randint(0, 10, (6,))), "target": torch.randn(6, 3, 28, 28)}
    model.training_step(batch, 0).backward()
    assert widths == [(torch.Size([6, 32]), torch.Size([6, 32])), (torch.Size([6, 10]), torch.Size([6, 10]))]
    assert model.bottleneck[0].weight.grad.abs().sum() > 0


def test_drcn_joint_schedule_steps_on_both_terms_of_eq3():
    from lightning_modules.drcn import DRCN

    with pytest.raises(ConfigError, match="model.schedule"):
        DRCN(BACKBONE, 10, 3, 28, adam, schedule="sometimes")
    model = DRCN(BACKBONE, 10, 3, 28, adam, schedule="joint")
    model.log_train = lambda *a, **k: None
    batch = {"source": (torch.randn(4, 3, 28, 28), torch.randint(0, 10, (4,))), "target": torch.rand(4, 3, 28, 28)}
    model.training_step(batch, 0).backward()
    # lambda L_c reaches the classifier and (1 - lambda) L_r the decoder in the same step
    assert model.classifier.weight.grad.abs().sum() > 0 and model.decoder.fc[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("adapt_dropout", [True, False])
def test_adapt_dropout_false_measures_the_discrepancy_without_dropout(adapt_dropout):
    model = CORAL(BACKBONE, 10, 3, adam, layers=["features"], adapt_dropout=adapt_dropout).train()
    seen = []
    model.discrepancy = lambda s, t: seen.append(s.detach().clone()) or (s.mean() - t.mean()) ** 2
    model.log_train = lambda *a, **k: None
    batch = {"source": (torch.randn(6, 3, 28, 28), torch.randint(0, 10, (6,))), "target": torch.randn(6, 3, 28, 28)}
    for _ in range(2):
        model.training_step(batch, 0)
    # dropout on: two passes over one batch differ; off: both equal the test-time (eval) features
    assert torch.equal(seen[0], seen[1]) is (not adapt_dropout)
    if not adapt_dropout:
        assert torch.allclose(seen[0], model.eval().backbone(batch["source"][0]), atol=1e-6)
        model.train()
    assert all(m.training for m in model.modules())  # dropout is switched back on


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_takes_the_discrepancy_between_unit_length_activations(normalize):
    model = DAN(BACKBONE, 10, 3, adam, layers=["features", "logits"], normalize=normalize).train()
    seen = []
    model.discrepancy = lambda s, t: seen.append((s.detach(), t.detach())) or mk_mmd2(s, t)
    model.log_train = lambda *a, **k: None
    batch = {"source": (torch.randn(6, 3, 28, 28), torch.randint(0, 10, (6,))), "target": torch.randn(6, 3, 28, 28)}
    model.training_step(batch, 0)
    norms = torch.cat([torch.cat([s, t]).norm(dim=1) for s, t in seen])
    # on: every row of every adapted layer has length 1; off: the raw activations (LeNet's are not unit length)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) is normalize


def test_drcn_denoise_reconstructs_the_clean_image_from_an_impulse_corrupted_input():
    from lightning_modules.drcn import DRCN

    with pytest.raises(ConfigError, match="model.denoise"):
        DRCN(BACKBONE, 10, 3, 28, adam, denoise=1.0)
    torch.manual_seed(0)
    model = DRCN(BACKBONE, 10, 3, 28, adam, denoise=0.3)
    x = torch.rand(8, 3, 28, 28) * 0.5 - 0.25  # no pixel at -1 or +1 before corruption
    noisy = model.corrupt(x)
    hit = (noisy != x).any(1)  # a hit pixel changes in all channels, to -1 or +1
    assert 0.25 < hit.float().mean() < 0.35
    assert set(noisy.permute(0, 2, 3, 1)[hit].unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(DRCN(BACKBONE, 10, 3, 28, adam).corrupt(x), x)  # denoise 0: untouched
    seen = []
    model.backbone.forward = lambda inp: seen.append(inp) or torch.zeros(len(inp), model.backbone.num_features)
    model.log_train = lambda *a, **k: None
    model.reconstruction_loss(x)
    assert (seen[0] != x).any()  # the encoder saw the corrupted copy ...
    expected = torch.nn.functional.mse_loss(model.decoder(torch.zeros(8, model.backbone.num_features)), x)
    assert model.reconstruction_loss(x).item() == pytest.approx(expected.item(), rel=1e-5)  # ... the clean x is the target


# ---- a pretrained backbone adapts at backbone_lr_mult x lr ----------------------------------------------

def _lrs_by_part(optimizer, model) -> dict[str, set]:
    """The learning rates each top-level part of `model` gets in `optimizer` (parts it does not train: absent)."""
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    parts: dict[str, set] = {}
    for name, p in model.named_parameters():
        if id(p) in lr_of:
            parts.setdefault(name.split(".")[0], set()).add(round(lr_of[id(p)], 12))
    return parts


def test_da_backbone_lr_mult_defaults_to_a_tenth_for_pretrained_weights_and_one_from_scratch():
    from lightning_modules.components.param_groups import backbone_lr_multiplier

    assert backbone_lr_multiplier(None, {"name": "resnet18", "pretrained": True}) == 0.1
    assert backbone_lr_multiplier(None, {"name": "lenet", "checkpoint": "encoder.pt"}) == 0.1
    assert backbone_lr_multiplier(None, BACKBONE) == 1.0
    assert backbone_lr_multiplier(0.5, BACKBONE) == 0.5
    with pytest.raises(ConfigError, match="model.backbone_lr_mult=0"):
        backbone_lr_multiplier(0, BACKBONE)


def test_dann_and_adda_train_the_backbone_at_backbone_lr_mult_and_the_new_parts_at_lr():
    from functools import partial

    from lightning_modules.adda import ADDA
    from lightning_modules.dann import DANN

    opt = partial(torch.optim.Adam, lr=1e-3)
    dann = DANN(BACKBONE, 10, 1, opt, backbone_lr_mult=0.1)
    assert _lrs_by_part(dann.configure_optimizers(), dann) == {
        "backbone": {1e-4}, "classifier": {1e-3}, "domain_classifier": {1e-3}}
    # from scratch (the default here): every parameter in one group at lr, as before the option existed
    scratch = DANN(BACKBONE, 10, 1, opt)
    groups = scratch.configure_optimizers().param_groups
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(scratch.parameters()))

    adda = ADDA(BACKBONE, 10, 1, opt, backbone_lr_mult=0.1, scheduler=None,
                adversarial_optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4})
    source, target, disc = adda.configure_optimizers()
    assert _lrs_by_part(source, adda) == {"backbone": {1e-4}, "classifier": {1e-3}}
    assert _lrs_by_part(target, adda) == {"target_encoder": {2e-5}}
    assert _lrs_by_part(disc, adda) == {"discriminator": {2e-4}}


def test_da_trainable_stages_freezes_the_early_stages_and_their_batchnorm():
    from functools import partial

    from lightning_modules.adda import ADDA
    from lightning_modules.dann import DANN
    from lightning_modules.components.stages import backbone_stages

    opt = partial(torch.optim.Adam, lr=1e-3)
    model = DANN({"name": "small_cnn"}, 10, 3, opt, trainable_stages=1)
    stages = backbone_stages(model.backbone)
    last = set(stages[-1])
    for name, p in model.backbone.named_parameters():
        assert p.requires_grad == (name in last), name
    trained = {id(p) for p in model.configure_optimizers().param_groups[0]["params"]}
    assert not any(id(p) in trained for n, p in model.backbone.named_parameters() if n not in last)
    assert all(p.requires_grad for p in model.domain_classifier.parameters())
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in norms if not m.weight.requires_grad]
    assert frozen and all(not m.training for m in frozen) and all(m.training for m in norms if m.weight.requires_grad)
    before = [m.running_mean.clone() for m in frozen]
    model.backbone(torch.randn(4, 3, 32, 32))  # a training-mode forward
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen))
    # ADDA's target encoder starts as a copy: the same stages frozen
    adda = ADDA({"name": "small_cnn"}, 10, 3, opt, trainable_stages=1, scheduler=None)
    assert [p.requires_grad for p in adda.target_encoder.parameters()] == [p.requires_grad for p in adda.backbone.parameters()]
    fixed = DANN({"name": "small_cnn"}, 10, 3, opt, trainable_stages=0)  # a fixed feature extractor
    assert not any(p.requires_grad for p in fixed.backbone.parameters())
    assert all(not m.training for m in fixed.train().backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ConfigError, match=rf"model.trainable_stages=9 must lie in \[0, {len(stages)}\]"):
        DANN({"name": "small_cnn"}, 10, 3, opt, trainable_stages=9)


# ---------------------------------------------------------------------------------------------
# model.bottleneck_dim: a new fc-BN-ReLU layer ends the feature extractor; alone trained on a frozen trunk,
# on the trunk's features computed once


def test_bottleneck_is_the_last_stage_trains_at_lr_and_takes_cached_trunk_features():
    from functools import partial

    from lightning_modules.adda import ADDA
    from lightning_modules.components.bottleneck import BottleneckEncoder
    from lightning_modules.components.stages import backbone_stages
    from lightning_modules.dann import DANN

    opt = partial(torch.optim.Adam, lr=1e-3)
    model = DANN({"name": "small_cnn"}, 10, 3, opt, bottleneck_dim=16, trainable_stages=1, backbone_lr_mult=0.1)
    assert isinstance(model.backbone, BottleneckEncoder) and model.backbone.num_features == 16
    assert model.classifier.in_features == 16 and model.domain_classifier[0].in_features == 16
    assert backbone_stages(model.backbone)[-1] == ["bottleneck.0.weight", "bottleneck.0.bias",
                                                   "bottleneck.1.weight", "bottleneck.1.bias"]
    assert model.backbone.trunk_frozen and all(p.requires_grad for p in model.backbone.bottleneck.parameters())
    # the bottleneck is new: it trains at lr, as the classifiers do (only a pretrained trunk gets the multiplier)
    assert _lrs_by_part(model.configure_optimizers(), model) == {
        "backbone": {1e-3}, "classifier": {1e-3}, "domain_classifier": {1e-3}}
    model.train()
    assert not model.backbone.trunk.training and all(not m.training for m in model.backbone.trunk.modules())
    assert model.backbone.bottleneck.training
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.backbone(images), model.backbone(model.backbone.trunk(images)))
    adda = ADDA({"name": "small_cnn"}, 10, 3, opt, bottleneck_dim=16, trainable_stages=1, scheduler=None)
    assert isinstance(adda.target_encoder, BottleneckEncoder)  # M_t adapts its own copy of the bottleneck
    with pytest.raises(ConfigError, match="model.bottleneck_dim=0 must be a positive width"):
        DANN({"name": "small_cnn"}, 10, 3, opt, bottleneck_dim=0)


def _fit_on_frozen_trunk(method: str, cache: bool, cache_dir):
    import pytorch_lightning as pl
    from functools import partial

    from datamodules.pair import PairDataModule
    from lightning_modules.adda import ADDA
    from lightning_modules.dann import DANN
    from lightning_modules.mme import MME

    pl.seed_everything(0)
    dm = PairDataModule({"name": "digits", "train_size": 64}, {"name": "digits_m", "train_size": 64}, channels=3,
                        image_size=16, batch_size=16, steps_per_epoch=4, num_workers=0, cache_dir=str(cache_dir),
                        target_labels_per_class=1 if method == "mme" else None)
    from lightning_modules.components.schedules import ProgressLR

    # DANN with the family's progress schedule, which asks for the step count (and so builds the loaders) early
    cls, extra = {"dann": (DANN, {"scheduler": partial(ProgressLR)}), "adda": (ADDA, {"scheduler": None}),
                  "mme": (MME, {})}[method]
    module = cls({"name": "small_cnn"}, 10, 3, partial(torch.optim.Adam, lr=1e-2), bottleneck_dim=16,
                 trainable_stages=1, cache_features=cache, tsne=False, **extra)
    images_seen = []
    for encoder in (module.backbone, getattr(module, "target_encoder", None)):  # ADDA: M_s and M_t
        if encoder is not None:
            encoder.trunk.register_forward_hook(lambda m, i, o: images_seen.append(len(o)))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    module.test_metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    splits = {(n, d): len(dm.split(n, d) or ()) for n in ("train", "val", "test", "labeled") for d in ("source", "target")}
    return module, sum(images_seen), splits, dm


@pytest.mark.parametrize("method", ["dann", "adda", "mme"])  # mme: the labeled target images too
def test_adaptation_on_cached_trunk_features_equals_the_per_step_path(method, tmp_path):
    cached, cached_images, splits, dm = _fit_on_frozen_trunk(method, cache=True, cache_dir=tmp_path)
    stepped, stepped_images, _, _ = _fit_on_frozen_trunk(method, cache=False, cache_dir=tmp_path)
    # a second run of the same frozen trunk on the same images reads the features data.cache_dir keeps
    again, again_images, _, _ = _fit_on_frozen_trunk(method, cache=True, cache_dir=tmp_path)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 6 + (method == "mme") and again_images == 0
    # each image of the six splits through the trunk once (the upper bound's test passes included), against
    # every training batch and every evaluation in the per-step path
    assert cached_images == sum(splits.values()) < stepped_images
    assert not any(type(dm.split(n, d)).__name__ == "FeatureDataset" for n, d in splits)  # put back after the test
    assert cached.test_metrics == pytest.approx(stepped.test_metrics) == again.test_metrics
    trained = dict(stepped.named_parameters())
    moved = 0
    for name, p in cached.named_parameters():
        assert torch.allclose(p, trained[name], atol=1e-4), name
        assert torch.equal(p, dict(again.named_parameters())[name]), name
        moved += p.requires_grad
    assert moved and cached.selected_epoch == stepped.selected_epoch
    assert [r["target_test_acc"] for r in cached.selection_history] == pytest.approx(
        [r["target_test_acc"] for r in stepped.selection_history])


def test_a_stored_features_file_that_is_truncated_foreign_or_wrong_sized_is_recomputed_not_trusted(tmp_path):
    from lightning_modules.components.feature_cache import FeatureDataset, compute_features, load_stored

    class Planted:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (print, ("planted code ran",))

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    data = [(torch.randn(3, 2, 2), i % 3) for i in range(10)]
    first = compute_features(net, data, 4, torch.device("cpu"), store=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    assert torch.equal(load_stored(path, 10), first.features)
    relabeled = [(x, 7) for x, _ in data]  # same photos, other labels (an open-set run): the stored features serve
    assert torch.equal(compute_features(net, relabeled, 4, torch.device("cpu"), store=tmp_path).labels, torch.full((10,), 7))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert load_stored(path, 11) is None  # another split's size
    torch.save(Planted(), path)
    assert load_stored(path, 10) is None
    path.write_bytes(b"PK\x03\x04 truncated")
    assert load_stored(path, 10) is None
    torch.save({"features": torch.zeros(10, 5)}, path)
    assert torch.equal(compute_features(net, data, 4, torch.device("cpu"), store=tmp_path).features, torch.zeros(10, 5))
    # the key follows the weights: changed weights, a new file, the right features
    with torch.no_grad():
        net[1].weight.add_(1.0)
    changed = compute_features(net, data, 4, torch.device("cpu"), store=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and isinstance(changed, FeatureDataset)
    assert torch.allclose(changed.features, net(torch.stack([x for x, _ in data])), atol=1e-6)
