"""Speed switches (issue #9): model.compile, model.channels_last, trainer.benchmark, persistent workers,
pinned memory, DDP without unused-parameter search; the batched DataLoader fetch; and each on-device
augmentation alone against the per-sample torchvision path."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from runner import build
from tests.conftest import compose
from datamodules.augment import AugmentSpec, ViewAugmenter
from datamodules.datasets import TensorImageDataset, fetch_items
from datamodules.errors import ConfigError

TINY = ("model=supervised", "data=digits", "data.batch_size=32", "trainer.max_epochs=1",
        "trainer.limit_val_batches=0", "callbacks=none", "logger=csv", "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false")


def fit(tmp_path, *overrides, steps: int = 2):
    """run.py's build path (config -> DataModule -> module -> Trainer) and `steps` training steps."""
    cfg = compose(*TINY, f"trainer.limit_train_batches={steps}", *overrides, run_dir=tmp_path)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule.data_info)
    trainer = build.build_trainer(cfg, [], build.build_all(cfg, "logger"))
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == steps and torch.isfinite(trainer.callback_metrics["train/loss_step"])
    return cfg, module, trainer, datamodule


@pytest.mark.slow
def test_compile_compiles_the_networks_in_place(tmp_path):
    assert {"compile", "channels_last"} <= set(compose(*TINY).model)  # every method has the switches
    try:
        _, module, _, _ = fit(tmp_path, "model.compile=true", steps=1)  # inductor, the default backend
    except Exception as err:  # noqa: BLE001
        if "inductor" not in f"{type(err).__module__} {err}".lower():
            raise
        pytest.skip(f"torch.compile's inductor toolchain does not work here: {type(err).__name__}: {str(err)[:300]}")
    assert module.compiled_children() == ["backbone", "classifier"]
    assert module.backbone._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    assert not any("_orig_mod" in k for k in module.state_dict())  # checkpoints / encoder.pt unchanged


def test_compile_options_are_checked():
    from lightning_modules.supervised import Supervised

    module = Supervised({"name": "lenet"}, num_classes=10, in_chans=1, optimizer=torch.optim.Adam)
    module.speed_options(compile={"backend": "eager"})
    assert module.compile_options == {"backend": "eager"}
    with pytest.raises(ConfigError, match="model.compile"):
        module.speed_options(compile="yes")


def test_channels_last(tmp_path):
    _, module, _, _ = fit(tmp_path, "model.channels_last=true")
    convs = [m.weight for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # (a 1-channel kernel is both; the others are NHWC only)


def test_trainer_benchmark_switch(tmp_path):
    assert compose("trainer=gpu").trainer.benchmark is True  # cudnn autotuning on GPUs by default
    _, _, trainer, _ = fit(tmp_path, "trainer.benchmark=true")
    assert torch.backends.cudnn.benchmark is True


def test_persistent_workers_and_pinned_memory(tmp_path):
    loader_cfg = compose(*TINY).data
    assert loader_cfg.pin_memory is None and loader_cfg.persistent_workers is True
    _, _, trainer, datamodule = fit(tmp_path, "data.num_workers=1")
    loader = trainer.train_dataloader
    assert loader.num_workers == 1 and loader.persistent_workers is True
    assert datamodule.pin_memory is False  # auto: pinned only when the trainer runs on a CUDA GPU
    datamodule.pin_memory_option = True
    assert datamodule.train_dataloader().pin_memory is True


def test_ddp_configs_do_not_search_for_unused_parameters():
    for trainer in ("ddp", "ddp_cpu"):
        assert compose(f"trainer={trainer}").trainer.strategy == "ddp"  # not ddp_find_unused_parameters_true


def test_batched_fetch_equals_item_by_item():
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(50) % 7)
    idx = [3, 49, 0, 3, 17]
    for (x1, y1), (x2, y2) in zip(fetch_items(data, idx), [data[i] for i in idx]):
        assert torch.equal(x1, x2) and y1 == y2 and type(y1) is type(y2)


# ---- each on-device colour/blur operation alone, against torchvision (fixed draw) ----------------
ONLY = {"jitter": dict(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0),
        "grayscale": dict(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0),
        "blur": dict(jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_kernel=5)}


@pytest.mark.parametrize("op", sorted(ONLY))
def test_each_operation_alone_matches_torchvision(op):
    aug = ViewAugmenter(AugmentSpec(flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_strength=1.0,
                                    **ONLY[op]), image_size=16, channels=3)
    x = torch.randint(0, 256, (16, 3, 16, 16), generator=torch.Generator().manual_seed(0)).float() / 255
    p = aug.sample(len(x), 16, 16, torch.Generator().manual_seed(1))
    assert bool({"jitter": p.jitter, "grayscale": p.gray, "blur": p.blur}[op].all())
    batched = aug.apply(x, p)
    single = torch.stack([aug.single(x[i], p[i]) for i in range(len(x))])
    assert (batched - single).abs().max() < 1e-4
    assert (batched - x).abs().max() > 1e-2  # the operation did change the images
    if op == "grayscale":
        assert torch.equal(batched[:, 0], batched[:, 1])


def test_colour_parameters_within_configured_ranges():
    aug = ViewAugmenter(AugmentSpec(jitter_strength=0.5, blur_sigma=(0.3, 1.5)), image_size=32, channels=3)
    p = aug.sample(3000, 32, 32, torch.Generator().manual_seed(0))
    k = 0.8 * 0.5
    assert p.saturation.min() >= 1 - k and p.saturation.max() <= 1 + k
    assert p.hue.abs().max() <= 0.2 * 0.5 and p.hue.std() > 0.03
    assert p.sigma.min() >= 0.3 and p.sigma.max() <= 1.5
    assert abs(p.gray.float().mean().item() - aug.spec.grayscale_p) < 0.03


def test_batched_backend_is_the_default_for_in_memory_data():
    spec = OmegaConf.to_container(compose("model=simclr").data.augment)
    assert spec["backend"] == "auto"
    from datamodules.multiview import MultiViewDataModule

    dm = MultiViewDataModule({"name": "digits"}, augment=spec, batch_size=16)
    dm.setup("fit")
    assert dm.backend == "batched"


def test_alternating_pair_loader_serves_one_domain_per_step_across_epochs():
    """DRCN's steps use one domain each, so the pair loader fetches only that domain's batch."""
    from torch.utils.data import DataLoader

    from datamodules.pair import EndlessDomainLoader

    source = DataLoader(list(range(10)), batch_size=2)  # batches [0, 1], [2, 3], ...
    target = DataLoader(list(range(100, 110)), batch_size=2)
    loader = EndlessDomainLoader({"source": source, "target": target}, steps=3, alternate=True)
    first, second = list(loader), list(loader)  # two epochs of an odd length
    keys = [tuple(b) for b in first + second]
    assert keys == [("source",), ("target",), ("source",), ("target",), ("source",), ("target",)]
    served_source = [b["source"].tolist() for b in first + second if "source" in b]
    served_target = [b["target"].tolist() for b in first + second if "target" in b]
    assert served_source == [[0, 1], [2, 3], [4, 5]] and served_target == [[100, 101], [102, 103], [104, 105]]
    both = list(EndlessDomainLoader({"source": source, "target": target}, steps=2))
    assert all(set(b) == {"source", "target"} for b in both)


def test_drcn_fit_receives_alternating_batches(tmp_path):
    """Through run.py's build path: DRCN's steps get source, target, source, ... batches and each
    step trains the part that batch is for (classifier on source, decoder on target)."""
    import pytorch_lightning as pl

    class Record(pl.Callback):
        def __init__(self):
            self.keys, self.stepped = [], []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.stepped.append((module.classifier.weight.grad is not None, module.decoder.fc[0].weight.grad is not None))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.keys.append(tuple(batch))

    cfg = compose(*TINY[2:], "model=drcn", "data=digits_to_digits_m", "model.tsne=false", "test=false",
                  "+data.steps_per_epoch=4", "trainer.max_epochs=1", "trainer.limit_train_batches=4", run_dir=tmp_path)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule.data_info)
    record = Record()
    trainer = build.build_trainer(cfg, [record], build.build_all(cfg, "logger"))
    trainer.fit(module, datamodule=datamodule)
    assert record.keys == [("source",), ("target",)] * 2
    assert record.stepped == [(True, False), (False, True)] * 2


def test_log_train_epoch_means_are_batch_weighted_and_step_values_follow_the_logger(tmp_path):
    """`BaseMethod.log_train`: the epoch value is the batch-size-weighted mean of the step values, and
    `self.log` is called only on the steps the loggers write (plus once per name at the epoch's end)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from lightning_modules.base import BaseMethod

    class Toy(BaseMethod):
        def __init__(self):
            super().__init__(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.log_calls = 0

        def log(self, *args, **kwargs):
            self.log_calls += 1
            return super().log(*args, **kwargs)

        def training_step(self, batch, batch_idx):
            size = batch_idx + 1  # step i: value i with batch size i + 1
            self.log_train({"train/value": torch.tensor(float(batch_idx))}, size, on_step=True)
            self.log_train({"train/other": 2.0}, size)
            return (self.w * 0).sum() + self.w.sum() * 0

    csv = pl.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = pl.Trainer(max_epochs=1, logger=csv, log_every_n_steps=3, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    toy = Toy()
    trainer.fit(toy, DataLoader(torch.zeros(6, 1), batch_size=1))
    steps = torch.arange(6.0)
    assert trainer.callback_metrics["train/value_epoch"].item() == pytest.approx(float((steps * (steps + 1)).sum() / (steps + 1).sum()))
    assert trainer.callback_metrics["train/other"].item() == pytest.approx(2.0)
    assert toy.log_calls == 2 + 2  # steps 3 and 6 write (log_every_n_steps=3), then two epoch means
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    written = [float(r.split(",")[header.index("train/value_step")]) for r in rows[1:] if r.split(",")[header.index("train/value_step")]]
    assert written == [2.0, 5.0]
