"""Domain adaptation end to end: every method on the embedded pair, the pair DataModule's contract
(endless iterators, no target labels in training, ADDA-protocol subsets), model selection, the
generic imagefolder form, and DDP on two CPU processes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from datamodules.errors import ConfigError
from datamodules.pair import PairDataModule

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["source_only", "target_oracle", "dann", "adda", "drcn", "dan", "coral"]
TINY = ["debug=smoke", "callbacks=none", "data.batch_size=16", "data.eval_batch_size=64",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"]


def train_in_process(overrides: list[str], run_dir: Path) -> dict:
    """`python run.py OVERRIDES` in this process (what benchmarks/domain_adaptation.py does)."""
    import run

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the run reads it through HydraConfig, as under @hydra.main
    metrics, _ = run.train(cfg)
    return metrics


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_reports_the_evaluation(method, tmp_path):
    extra = ["model.tsne=true", "model.tsne_points=24"] if method == "adda" else ["model.tsne=false"]
    # ADDA needs batches in both phases: 2 epochs of 3 batches, the adversarial phase from batch 3
    length = ["trainer.max_epochs=2"] if method == "adda" else []
    metrics = train_in_process([f"model={method}", "data=digits_to_digits_m", *TINY, *extra, *length], tmp_path)
    for key in ("test/target_acc", "test/source_acc", "test/target_acc_class/0", "test/target_acc_class/9",
                "test/domain_acc", "test/proxy_a_distance"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["test/domain_acc"] <= 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["metrics"]["test/target_acc"] == metrics["test/target_acc"]
    assert (tmp_path / "encoder.pt").is_file()
    if method == "adda":
        assert (tmp_path / "plots" / "tsne_before.png").is_file() and (tmp_path / "plots" / "tsne_after.png").is_file()


def test_select_best_uses_the_source_validation_split(tmp_path):
    metrics = train_in_process(["model=dann", "data=digits_to_digits_m", *TINY, "model.tsne=false",
                                "model.select=best", "model.validator=source_acc", "trainer.max_epochs=2"], tmp_path)
    assert metrics["test/selected_epoch"] in (0.0, 1.0)
    assert metrics["test/selected_by_target"] == 0.0
    assert "val/source_acc" in metrics and "val/target_acc" in metrics


def test_bad_select_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps the module's ConfigError
        train_in_process(["model=dann", "data=digits_to_digits_m", *TINY, "model.select=newest"], tmp_path)
    cause = err.value if isinstance(err.value, ConfigError) else err.value.__cause__
    assert isinstance(cause, ConfigError) and "model.select='newest'" in str(cause) and "best" in str(cause)


def test_pair_batches_hide_target_labels_and_iterate_endlessly():
    dm = PairDataModule({"name": "digits", "train_size": 100}, {"name": "digits_m"}, channels=3, batch_size=32,
                        steps_per_epoch=7)
    dm.setup("fit")
    assert len(dm.source.train) == 100 and len(dm.target.train) > 1000
    loader = dm.train_dataloader()
    assert len(loader) == 7
    seen = 0
    for _ in range(3):  # three epochs of 7 steps: the 100-image source wraps around without stopping
        for batch in loader:
            xs, ys = batch["source"]
            assert torch.is_tensor(batch["target"]) and batch["target"].shape == (32, 3, 28, 28)
            assert xs.shape == (32, 3, 28, 28) and ys.shape == (32,)
            seen += 1
    assert seen == 21
    oracle = PairDataModule({"name": "digits"}, {"name": "digits_m"}, channels=3, batch_size=8,
                            train_target_labels=True)
    oracle.setup("fit")
    xt, yt = next(iter(oracle.train_dataloader()))["target"]
    assert yt.shape == (8,)


def test_train_size_is_seeded_and_checked():
    a = PairDataModule({"name": "digits", "train_size": 50}, {"name": "digits"}, split_seed=3)
    b = PairDataModule({"name": "digits", "train_size": 50}, {"name": "digits"}, split_seed=3)
    a.setup(), b.setup()
    assert torch.equal(a.source.train.images, b.source.train.images)
    bad = PairDataModule({"name": "digits", "train_size": 10**6}, {"name": "digits"})
    with pytest.raises(ConfigError, match=r"data.source.train_size=1000000 must lie in \[1, "):
        bad.setup()


def test_adda_protocol_presets_on_the_real_pair(shared_data):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for data, (n_source, n_target) in {"mnist_to_usps": (2000, 1800), "usps_to_mnist": (1800, 2000)}.items():
            cfg = compose("config", overrides=["model=dann", f"data={data}",
                                               f"paths.shared_data_dir={shared_data}", "paths.root_dir=."])
            options = {k: v for k, v in cfg.data.items()}
            dm = PairDataModule(**{k: (dict(v) if hasattr(v, "items") else v) for k, v in options.items()})
            dm.setup("fit")
            assert (len(dm.source.train), len(dm.target.train)) == (n_source, n_target)
            assert dm.source.shape == dm.target.shape == (1, 28, 28)
            x, _ = dm.target.test[0]
            assert -1.0 <= x.min() and x.max() <= 1.0
            usps = dm.target if data == "mnist_to_usps" else dm.source
            assert len(usps.test) == 2007  # usps_test.npz is the USPS test set


def write_png_folder(root: Path, seed: int, shift: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in range(2):
        (root / f"class{cls}").mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 60, (28, 28), dtype=np.uint8) + shift
            img[4 + 12 * cls : 12 + 12 * cls, 4:24] = 250  # class = where the bar is
            Image.fromarray(img).save(root / f"class{cls}" / f"{i}.png")


def test_generic_imagefolder_pair_from_the_command_line(cli, tmp_path):
    write_png_folder(tmp_path / "A", 0, 0)
    write_png_folder(tmp_path / "B", 1, 80)
    run_dir = tmp_path / "run"
    cli("model=dann", "data=pair", "data.source.name=imagefolder", f"data.source.root={tmp_path / 'A'}",
        "data.target.name=imagefolder", f"data.target.root={tmp_path / 'B'}", "data.val_fraction=0.2",
        *TINY, "model.tsne=false", run_dir=run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert 0.0 <= results["metrics"]["test/target_acc"] <= 1.0


# ADDA: its two stages switch under DDP. (DANN's adversarial path runs under DDP as CDAN's and MCC's, in
# tests/test_da_part2.py; every DDP run costs three interpreters' start-up, so one per distinct path.)
@pytest.mark.parametrize("method", ["adda"])
def test_ddp_cpu_runs_to_completion(method, cli, tmp_path):
    cli(f"model={method}", "data=digits_to_digits_m", "trainer=ddp_cpu", *TINY, "model.tsne=false",
        "trainer.max_epochs=2", "data.steps_per_epoch=2", run_dir=tmp_path, timeout=900)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["trainer"]["devices"] == 2
    assert 0.0 <= results["metrics"]["test/target_acc"] <= 1.0
