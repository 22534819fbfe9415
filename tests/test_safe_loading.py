"""Every file the project loads goes through safe_load (torch.load(weights_only=True)).

A crafted pickle whose `__reduce__` would create a marker file is fed to every loader: each one fails
with a one-line error naming the option, creates no marker and leaves the planted file where it was.
Every method's checkpoint loads with weights_only=True, and a normal resume still works.
"""
from __future__ import annotations

import ast
import functools
import json
import pathlib
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT, compose, train_in_process
from datamodules.errors import ConfigError
from lightning_modules.components.safe_load import SafeCheckpointIO, safe_load

# Keep each fit to a few steps; methods whose evaluation samples or clusters get smaller settings.
FEW_STEPS = ["debug=smoke", "callbacks.progress_bar=null", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
DDPM_SMALL = ["model.input.image_size=16", "model.unet.base_channels=8", "model.diffusion.timesteps=50", "model.sampling.ddim_steps=5",
              "model.grid.num_images=4", "model.evaluation.num_samples=32", "model.evaluation.classifier.epochs=1",
              "trainer.max_steps=-1"]  # the epoch-based resume below (DDPM's default budget is max_steps)


class Evil:
    """Unpickling this runs `Path.touch(marker)`: what a crafted checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> Path:
    """A file in torch.save's format that looks like a Lightning checkpoint and holds `Evil`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0, "global_step": 0, "payload": Evil(marker)}, path)
    return path


@pytest.fixture
def evil(tmp_path):
    """(planted file factory, marker); every test asserts the marker is never created."""
    marker = tmp_path / "marker_created_by_pickle"
    yield functools.partial(plant, marker=marker), marker
    assert not marker.exists(), "the crafted pickle ran"


def assert_refused(err: pytest.ExceptionInfo, option: str, planted: Path) -> None:
    message = str(err.value)
    assert option in message and str(planted) in message, message
    assert "refused" in message and "nothing in it was run" in message, message
    assert "\n" not in message
    assert planted.is_file(), "the refused file must be kept"


def test_the_crafted_pickle_really_runs_code_without_weights_only(tmp_path):
    """The fixture is a real attack: an unrestricted load creates the marker (so the tests below can fail)."""
    marker = tmp_path / "marker"
    torch.load(plant(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------------
# options the user passes


def test_ckpt_path_file_is_refused(tmp_path, evil):
    make, _ = evil
    planted = make(tmp_path / "elsewhere" / "model.ckpt")
    with pytest.raises(ConfigError) as err:
        train_in_process("data=digits", f"ckpt_path={planted}", run_dir=tmp_path / "run")
    assert_refused(err, "ckpt_path=", planted)


def test_ddpm_sample_only_checkpoint_is_refused(tmp_path, evil):
    make, _ = evil
    planted = make(tmp_path / "ddpm.ckpt")
    with pytest.raises(ConfigError) as err:
        train_in_process("model=ddpm", "data=digits", "train=false", "model.sample_only=true", f"ckpt_path={planted}",
                         *DDPM_SMALL, run_dir=tmp_path / "run")
    assert_refused(err, "ckpt_path=", planted)


def test_backbone_checkpoint_is_refused(tmp_path, evil):
    make, _ = evil
    planted = make(tmp_path / "encoder.pt")
    with pytest.raises(ConfigError) as err:
        train_in_process("data=digits", "debug=smoke", f"model.backbone.checkpoint={planted}", run_dir=tmp_path / "run")
    assert_refused(err, "model.backbone.checkpoint=", planted)


def test_backbone_pretrained_file_is_refused(tmp_path, evil):
    from lightning_modules.components.backbones import create_backbone

    make, _ = evil
    planted = make(tmp_path / "weights.pth")
    with pytest.raises(ConfigError) as err:
        create_backbone("small_cnn", in_chans=1, pretrained_file=str(planted))
    assert_refused(err, "model.backbone.pretrained_file=", planted)


@pytest.mark.parametrize("option", ["model.teacher.checkpoint", "model.teacher.pretrained_file"])
def test_distillation_teacher_is_refused(tmp_path, evil, option):
    make, _ = evil
    planted = make(tmp_path / "teacher.pt")
    extra = ["model.teacher.name=small_cnn"] if option.endswith("pretrained_file") else []
    with pytest.raises(ConfigError) as err:
        train_in_process("model=distill", "data=digits", "debug=smoke", f"{option}={planted}", *extra,
                         run_dir=tmp_path / "run")
    assert_refused(err, f"{option}=", planted)


# ------------------------------------------------------------------------------------------------
# files the tool finds by itself


def test_planted_last_ckpt_is_refused_on_ckpt_path_last(tmp_path, evil):
    make, _ = evil
    planted = make(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError) as err:
        train_in_process("data=digits", "ckpt_path=last", run_dir=tmp_path)
    assert_refused(err, "ckpt_path=last", planted)


SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.fixture
def on_slurm(monkeypatch):
    import signal

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():  # cluster_plugins / Lightning's requeue handlers
        signal.signal(s, handler)


def test_planted_hpc_checkpoint_is_refused_and_kept_on_slurm(tmp_path, evil, on_slurm):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    assert SLURMEnvironment.detect()
    make, _ = evil
    planted = make(tmp_path / "hpc_ckpt_1.ckpt")  # Lightning resumes from this with no option at all
    with pytest.raises(ConfigError) as err:
        train_in_process("data=digits", *FEW_STEPS, run_dir=tmp_path)
    assert_refused(err, "SLURM requeue checkpoint", planted)


def test_own_hpc_checkpoint_resumes_on_slurm_and_is_then_discarded(tmp_path, on_slurm):
    """The requeue path still works: Lightning finds hpc_ckpt_1.ckpt, reads it safely, resumes, then it is removed."""
    train_in_process("data=digits", *FEW_STEPS, "test=false", run_dir=tmp_path)
    snapshot = tmp_path / "hpc_ckpt_1.ckpt"
    snapshot.write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes())
    train_in_process("data=digits", *FEW_STEPS, "test=false", "trainer.max_epochs=2", run_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # 2 + 2 resumed
    assert not snapshot.exists()


def test_discard_hpc_checkpoints_removes_only_files_of_this_job(tmp_path):
    from runner.slurm import discard_hpc_checkpoints

    ours, foreign = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    for path in (ours, foreign):
        torch.save({"state_dict": {}}, path)
    io = SafeCheckpointIO()
    io.load_checkpoint(ours)  # a snapshot this job resumed from
    trainer = types.SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path),
                                    strategy=types.SimpleNamespace(checkpoint_io=io, barrier=lambda name: None))
    discard_hpc_checkpoints(trainer)
    assert not ours.exists() and foreign.is_file()


def test_fid_classifier_cache_is_refused(tmp_path, evil):
    from torch.utils.data import TensorDataset

    from lightning_modules.evaluation.fid import FeatureClassifier, cached_classifier, classifier_cache_file

    make, _ = evil
    key_spec = {"dataset": "digits"}
    options = {"epochs": 1}
    spec = {**key_spec, "in_chans": 1, "num_classes": 10, **options}
    planted = make(classifier_cache_file(tmp_path / "cache", spec, FeatureClassifier(1, 10, "small_cnn")))
    data = TensorDataset(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError) as err:
        cached_classifier(tmp_path / "cache", key_spec, data, data, 1, 10, **options)
    assert_refused(err, "model.evaluation.cache_dir=", planted)


# ------------------------------------------------------------------------------------------------
# other bad files: one line, naming the option and the file


@pytest.mark.parametrize("legacy", [False, True])
def test_both_torch_file_formats_are_refused(tmp_path, evil, legacy):
    _, marker = evil
    planted = tmp_path / "x.pt"
    torch.save({"payload": Evil(marker)}, planted, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ConfigError) as err:
        safe_load(planted, "model.backbone.checkpoint")
    assert_refused(err, "model.backbone.checkpoint", planted)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="garbage.pt: not a readable PyTorch checkpoint"):
        safe_load(garbage, "model.backbone.checkpoint")


def test_older_checkpoints_with_optimizer_partials_load_and_nothing_else_does(tmp_path, evil):
    """Checkpoints written before plain hyperparameters pickle Hydra partials of optimizer classes: those
    (and only those) are allowed; a partial of any other callable is refused."""
    import os

    from hydra.utils import instantiate

    _, marker = evil
    old = tmp_path / "old.ckpt"
    partial = instantiate({"_target_": "torch.optim.Adam", "lr": 0.5}, _partial_=True)
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"optimizer": partial}}, old)
    assert safe_load(old, "ckpt_path=old")["hyper_parameters"]["optimizer"].keywords["lr"] == 0.5
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": {"optimizer": functools.partial(os.system, f"touch {marker}")}}, crafted)
    with pytest.raises(ConfigError) as err:
        safe_load(crafted, "ckpt_path=crafted")
    assert_refused(err, "ckpt_path=crafted", crafted)
    assert "system" in str(err.value)


def test_missing_truncated_and_foreign_checkpoints_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"model.backbone.checkpoint=.*nope.pt: no such file"):
        safe_load(tmp_path / "nope.pt", f"model.backbone.checkpoint={tmp_path / 'nope.pt'}")
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"ckpt_path=.*truncated.ckpt: not a readable PyTorch checkpoint"):
        train_in_process("data=digits", f"ckpt_path={truncated}", run_dir=tmp_path / "run")
    assert truncated.is_file()


def test_checkpoint_of_another_method_is_summarised(tmp_path):
    train_in_process("data=digits", *FEW_STEPS, "test=false", run_dir=tmp_path / "supervised")
    ckpt = tmp_path / "supervised" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        train_in_process("model=ddpm", "data=digits", "train=false", f"ckpt_path={ckpt}", *DDPM_SMALL,
                         run_dir=tmp_path / "ddpm")
    message = str(err.value)
    assert f"ckpt_path={ckpt}" in message and "a checkpoint of another method or network" in message
    assert "missing" in message and "unexpected" in message and "e.g." in message and "\n" not in message
    assert len(message) < 700, message  # a summary, not the whole list of names


# ------------------------------------------------------------------------------------------------
# every method fits, its checkpoint is weights_only-loadable, it resumes and its test phase runs

COLOUR_ONLY = {"colorization"}  # predicts colour from grey: on grey data it fails before training (test_pretext.py)
# Keep each fit to seconds: methods whose evaluation samples, clusters or draws get smaller settings.
SMALL = {
    "ddpm": DDPM_SMALL,
    "ddpm_encoder": ["model.input.image_size=16", "model.backbone.base_channels=8"],
    "osbp": ["data.known_classes=6"],  # open set: the target's classes 6-9 are unknown
}


def methods() -> list[tuple[str, str]]:
    """Every method with data of its kind. Single-dataset methods alternate grey `digits` and colour
    `digits_m`, so both channel conversions are fitted and tested without fitting every method twice."""
    from hydra.utils import get_class

    pairs = []
    for i, path in enumerate(sorted((CONF_DIR / "model").glob("*.yaml"))):
        kind = getattr(get_class(compose(f"model={path.stem}").model.datamodule._target_), "data_kind", "single")
        single = "digits_m" if path.stem in COLOUR_ONLY or i % 2 else "digits"
        pairs.append((path.stem, {"pair": "digits_to_digits_m", "multi": "embedded_domains"}.get(kind, single)))
    return pairs


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """data -> a supervised LeNet's encoder.pt on it (distill's teacher, the source-free methods' source)."""
    runs = {}

    def encoder_of(data: str) -> Path:
        if data not in runs:
            runs[data] = tmp_path_factory.mktemp(f"teacher_{data}")
            train_in_process(f"data={data}", *FEW_STEPS, "test=false", run_dir=runs[data])
        return runs[data] / "encoder.pt"
    return encoder_of


def small_settings(model: str, data: str, request) -> list[str]:
    cfg = compose(f"model={model}")
    extra = list(SMALL.get(model, []))
    if data == "digits_to_digits_m":
        extra.append("model.tsne=false")  # the t-SNE maps are the slowest part of a 2-step run
    if "tsne" in cfg.model.get("evaluation", {}):
        extra.append("model.evaluation.tsne=false")
    if "knn_bank_size" in cfg.data:
        extra.append("data.knn_bank_size=64")  # the kNN evaluation embeds the bank
    if model == "distill":
        extra.append(f"model.teacher.checkpoint={request.getfixturevalue('teacher')(data)}")
    if model in ("shot", "aad", "self_training"):  # source-free: they adapt a trained source model
        extra.append(f"model.source_model={request.getfixturevalue('teacher')(data)}")
    return extra


@pytest.mark.parametrize("model,data", methods())
def test_every_method_fits_checkpoints_weights_only_resumes_and_tests(tmp_path, model, data, request):
    common = (f"model={model}", f"data={data}", *FEW_STEPS, *small_settings(model, data, request))
    train_in_process(*common, "test=false", run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    first = ckpt["global_step"]
    assert first > 0 and ckpt["hyper_parameters"]["optimizer"]["_target_"].startswith("torch.optim.")
    metrics, _ = train_in_process(*common, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path)
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] > first
    assert any(k.startswith("test/") for k in metrics), metrics
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


def test_partial_optimizer_is_saved_as_a_plain_config(tmp_path):
    """Programmatic use with functools.partial still works, and its checkpoint still loads weights_only."""
    import pytorch_lightning as pl

    from lightning_modules.base import optimizer_factory
    from lightning_modules.supervised import Supervised

    module = Supervised({"name": "lenet"}, 10, 1, functools.partial(torch.optim.SGD, lr=0.1, momentum=None))
    assert module.hparams["optimizer"] == {"_target_": "torch.optim.sgd.SGD", "lr": 0.1, "momentum": None}
    assert "momentum" not in module.optimizer_factory.keywords  # null options are dropped
    rebuilt = optimizer_factory(module.hparams["optimizer"])(params=module.parameters())
    assert isinstance(rebuilt, torch.optim.SGD) and rebuilt.defaults["lr"] == 0.1
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]["optimizer"]["lr"] == 0.1
    with pytest.raises(ConfigError, match="model.optimizer._target_=torch.optim.Nope"):
        optimizer_factory({"_target_": "torch.optim.Nope", "lr": 1.0})


def test_preset_switching_sgd_to_adam_with_null_options_builds_adam(tmp_path):
    """The runner's form: a plain {_target_, ...} dict from the config, `momentum: null` dropped."""
    from conftest import compose

    from lightning_modules.base import optimizer_factory

    cfg = compose("model=dann", "optimizer=sgd", "model.optimizer.momentum=null", "model.optimizer._target_=torch.optim.Adam",
                  "~model.optimizer.nesterov", run_dir=tmp_path)
    spec = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    assert "momentum" in spec and spec["momentum"] is None
    optimizer = optimizer_factory(spec)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam)


# ------------------------------------------------------------------------------------------------
# no other torch.load in the package


def torch_load_calls(path: Path) -> list[str]:
    """`torch.load(...)` / `load(...)` imported from torch, and `weights_only=False`, outside safe_load()."""
    tree = ast.parse(path.read_text(), str(path))
    allowed = set()
    if path == ROOT / "lightning_modules" / "components" / "safe_load.py":
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "safe_load"
                   for n in ast.walk(f)}
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("torch") for a in n.names if a.name == "load"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in allowed:
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch") \
                or (isinstance(f, ast.Name) and f.id in imported):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: torch.load")
        if any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is False
               for k in node.keywords):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: weights_only=False")
    return found


def test_no_torch_load_outside_the_one_loading_function():
    files = [ROOT / "run.py", *[p for d in ("lightning_modules", "datamodules", "benchmarks")
                                for p in sorted((ROOT / d).rglob("*.py"))]]
    assert len(files) > 20
    found = [hit for path in files for hit in torch_load_calls(path)]
    assert not found, "load files through lightning_modules.components.safe_load.safe_load:\n" + "\n".join(found)
    sample = ROOT / "tests" / "test_safe_loading.py"  # the checker itself finds a call (this file has some)
    assert torch_load_calls(sample)
