"""The runner end to end: config composition, smoke fits, artefacts, resume, sweeps, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF_DIR, compose, read_results, run_cli, train_in_process
from run import DA_PROTOCOLS
from datamodules.errors import ConfigError, DataFormatError

GROUPS = ["model", "data", "trainer", "amp", "logger", "callbacks", "paths", "experiment", "optimizer", "debug"]
# Data configs that need nothing from the network or the user's disk, one per kind of method. (Every method
# fits, resumes and tests on data of its kind in tests/test_safe_loading.py.)
OFFLINE_DATA = {"single": ["digits_m"], "pair": ["digits_to_digits_m"], "multi": ["embedded_domains"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def model_kind(model: str) -> str:
    cfg = compose(f"model={model}")
    return getattr(get_class(cfg.model.datamodule._target_), "data_kind", "single")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(tmp_path, group, option):
    # a protocol preset names no method: compose it with one of its kind
    method = "simclr" if option.startswith("ssl_") else "dann" if option in DA_PROTOCOLS.values() else None
    cfg = compose(f"{group}={option}", *([f"model={method}"] if group == "experiment" and method else []), run_dir=tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["model"]["_target_"] and container["trainer"]["_target_"]


def invalid_pairs():
    return [(m, d) for m in options("model") for kind, datas in OFFLINE_DATA.items() if kind != model_kind(m)
            for d in datas[:1]]


@pytest.mark.parametrize("model,data", invalid_pairs())
def test_invalid_model_data_pair_fails_before_training(tmp_path, model, data):
    with pytest.raises(ConfigError, match=f"model={model}"):
        train_in_process(f"model={model}", f"data={data}", "debug=smoke", run_dir=tmp_path)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_single_run_writes_results_with_metrics_config_seed_versions(tmp_path):
    proc = run_cli(run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["status"] == "completed"
    assert {"test/acc", "val/acc"} <= set(results["metrics"])
    assert results["metrics"]["test/acc"] > 0.5  # 10 classes: chance is 0.1
    assert results["seed"] == 0 and results["wall_time_s"] > 0
    assert results["config"]["model"]["_target_"]
    assert {"torch", "pytorch-lightning", "timm", "hydra-core"} <= set(results["versions"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "encoder.pt").is_file()
    assert "test/acc" in proc.stdout  # the final metrics table


def write_folder(root, layout: str):
    rng = np.random.default_rng(0)
    splits = ["train", "test"] if layout == "split" else [None]
    for split in splits:
        for label, cls in enumerate(["circle", "square"]):
            folder = root / cls if split is None else root / split / cls
            folder.mkdir(parents=True)
            for i in range(12):
                img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
                if cls == "square":
                    img[4:12, 4:12] = 250
                else:
                    img[6:10, :] = 250
                Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_supervised_on_image_folder(tmp_path, layout):
    write_folder(tmp_path / "photos", layout)
    metrics, _ = train_in_process("model=supervised", "data=imagefolder", f"data.dataset.root={tmp_path / 'photos'}",
                                  "data.num_workers=0", "trainer.max_epochs=2", "callbacks=none", run_dir=tmp_path / "run")
    assert "test/acc" in metrics


def test_pair_with_class_mismatch_names_both_datasets(tmp_path):
    from datamodules.pair import PairDataModule

    write_folder(tmp_path / "a", "flat")
    dm = PairDataModule(source={"name": "digits"}, target={"name": "imagefolder", "root": str(tmp_path / "a")},
                        channels=3, image_size=28)
    with pytest.raises(DataFormatError, match="source 'digits' and target 'imagefolder' have different classes"):
        dm.setup()


def test_pair_with_channel_mismatch_names_both_datasets():
    from datamodules.pair import PairDataModule

    dm = PairDataModule(source={"name": "digits"}, target={"name": "digits_m"}, channels=None)
    with pytest.raises(DataFormatError, match="source 'digits' and target 'digits_m' have 1 vs 3 channels"):
        dm.setup()


def test_resume_from_last_checkpoint_continues_training(tmp_path):
    common = ["data=digits", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "callbacks.progress_bar=null"]
    train_in_process(*common, "trainer.max_epochs=1", run_dir=tmp_path)
    first = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    train_in_process(*common, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path)
    import torch

    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 6  # 3 steps from run 1 + 3 more after resuming
    assert first["status"] == "completed"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        train_in_process("ckpt_path=last", run_dir=tmp_path)


def test_bf16_autocast_on_cpu(tmp_path):
    metrics, _ = train_in_process("amp=bf16", "debug=smoke", "callbacks=none", run_dir=tmp_path)
    assert np.isfinite(metrics["test/loss"])


def test_ddp_cpu_two_processes(tmp_path):
    run_cli("trainer=ddp_cpu", "trainer.max_epochs=2", "callbacks.progress_bar=null", run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["status"] == "completed" and results["metrics"]["test/acc"] > 0.5
    assert results["config"]["trainer"]["devices"] == 2


def test_local_sweep_gives_one_run_dir_per_job(tmp_path):
    run_cli("-m", "seed=0,1", "debug=smoke", "callbacks=none", f"hydra.sweep.dir={tmp_path}")
    seeds = sorted(read_results(tmp_path / str(i))["seed"] for i in range(2))
    assert seeds == [0, 1]


def test_unknown_choice_lists_valid_choices(tmp_path):
    proc = run_cli("model=not_a_method", run_dir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "not_a_method" in proc.stderr and "supervised" in proc.stderr  # Hydra lists available options


def test_unknown_dataset_on_command_line_fails_early_with_choices(tmp_path):
    proc = run_cli("data.dataset.name=imagenet1k", run_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "not a registered dataset" in proc.stderr and "digits" in proc.stderr
    results = read_results(tmp_path)
    assert results["status"] == "failed" and results["metrics"] == {}


def test_missing_data_without_download_names_path(tmp_path):
    proc = run_cli("data=mnist", f"data.dataset.root={tmp_path / 'empty'}", run_dir=tmp_path / "run", check=False)
    assert proc.returncode != 0 and str(tmp_path / "empty") in proc.stderr and "download=true" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_backbone_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="lenet"):
        train_in_process("model.backbone.name=lenett", run_dir=tmp_path)
