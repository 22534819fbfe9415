"""The catalogue of bad inputs (issue 28): each gets an early one-line error naming the file or option and
the fix, exit status 1 without a traceback, and no file outside the run dir changes. README, "What happens
when", lists the same cases.

Most cases call run.py's Hydra entry point in this process (`run.main()` with `sys.argv` set: the same
composition, error printing and exit status as the command, without the start-up cost); a few run the
real command to check what a user sees.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from datamodules.errors import DataFormatError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# helpers


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `roots` (the checkout and the inputs); caches, the virtual
    environment and benchmark outputs (written by other processes, never by a run into a tmp dir) left out."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__", ".pytest_cache", ".venv", "venv")
                           and not (d == "benchmarks" and os.path.basename(dirpath) == "outputs")]
            for name in filenames:
                st = os.stat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def main_in_process(*overrides: str, run_dir: Path, capsys) -> tuple[int, str]:
    """`python run.py OVERRIDES hydra.run.dir=RUN_DIR` through run.main() here: (exit status, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    import run

    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [str(ROOT / "run.py"), "--config-path", str(ROOT / "conf"), *overrides,
                f"hydra.run.dir={run_dir}"]
    try:
        run.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()  # Hydra's logging config would outlive the call
    return code, capsys.readouterr().err


def npz(path: Path, images, labels) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


def digits_like(n: int = 300, size: int = 8, dtype=np.uint8, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, (n, size, size)).astype(dtype)


THREE = np.arange(300) % 3  # three balanced classes


def folder(root: Path, sizes=None, corrupt: bool = False) -> Path:
    """root/<class>/<i>.png, 16x16 unless `sizes` maps (class, i) to another (w, h)."""
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            w, h = (sizes or {}).get((cls, i), (16, 16))
            Image.fromarray(RNG.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "b" / "broken.png").write_bytes(b"not a png")
    return root


# ---------------------------------------------------------------------------------------------
# the catalogue: (name, builder of the overrides from a tmp dir, key words of the message)


def _npz_case(images, labels, name="data.npz"):
    return lambda tmp: ["data=npz", f"data.dataset.path={npz(tmp / name, images, labels)}"]


def _npz_pair(train_labels, test_labels):
    def make(tmp):
        tr = npz(tmp / "train.npz", digits_like(len(train_labels)), train_labels)
        te = npz(tmp / "test.npz", digits_like(len(test_labels)), test_labels)
        return ["data=npz", f"data.dataset.train_path={tr}", f"data.dataset.test_path={te}"]
    return make


def _zero_byte(tmp):
    (tmp / "zero.npz").write_bytes(b"")
    return ["data=npz", f"data.dataset.path={tmp / 'zero.npz'}"]


def _truncated(tmp):
    whole = npz(tmp / "whole.npz", digits_like(), THREE)
    (tmp / "cut.npz").write_bytes(whole.read_bytes()[:3000])  # a copy interrupted part-way
    return ["data=npz", f"data.dataset.path={tmp / 'cut.npz'}"]


def _no_arrays(tmp):
    np.savez(tmp / "none.npz", pixels=np.zeros(3))
    return ["data=npz", f"data.dataset.path={tmp / 'none.npz'}"]


def _nan_images():
    images = RNG.random((300, 8, 8)).astype(np.float32)
    images[5, 2, 2] = np.nan
    images[9, 0, 0] = np.inf
    return images


CASES = {
    "npz uint16 (was wrapped modulo 256)": (
        _npz_case(digits_like(dtype=np.uint16, high=65536), THREE), ["field 'images'", "uint16", "uint8", "data.npz"]),
    "npz NaN pixels (were 0)": (_npz_case(_nan_images(), THREE), ["NaN/Inf", "2 images", "data.npz"]),
    "npz float images outside [0, 1]": (
        _npz_case(digits_like().astype(np.float32), THREE), ["[0, 1]", "divide", "255"]),
    "npz 300 images, 250 labels (trained on 250)": (
        _npz_case(digits_like(), THREE[:250]), ["300 images but 250 labels", "data.npz"]),
    "npz float labels 1.7 (were truncated)": (
        _npz_case(digits_like(), THREE + 0.7), ["field 'labels'", "non-integer", "1.7", "integers"]),
    "npz labels up to 1000 (a 1,001-class head)": (
        _npz_case(digits_like(), np.array([0, 500, 1000])[THREE]), ["3 distinct values up to 1000", "remap"]),
    "npz a class without training images": (
        _npz_case(digits_like(), np.array([0, 1, 3])[THREE]), ["no training image", "(2)"]),
    "npz single class": (_npz_case(digits_like(), THREE * 0), ["1 class", "at least 2 classes"]),
    "npz test labels outside the training classes": (
        _npz_pair(THREE, np.arange(40) % 4), ["test split", "10 images", "training split lacks", "(3)"]),
    "npz with no images": (
        _npz_case(np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64)), ["0 images", "data.npz"]),
    "npz zero-byte file": (_zero_byte, ["zero.npz", "not a readable .npz", "np.savez"]),
    "npz truncated archive (a bare BadZipFile)": (_truncated, ["cut.npz", "not a readable .npz", "BadZipFile"]),
    "npz without images/labels arrays": (_no_arrays, ["lacks arrays", "'images'", "'labels'", "pixels"]),
    "image folder with mixed sizes": (
        # small_cnn takes any size, so the folder's own sizes are kept (LeNet would resize to 28)
        lambda tmp: ["data=imagefolder", f"data.dataset.root={folder(tmp / 'photos', {('b', 3): (20, 12)})}",
                     "model.backbone.name=small_cnn"],
        ["different sizes", "16x16", "b/3.png is 20x12", "data.image_size"]),
    "image folder with a corrupt image": (
        lambda tmp: ["data=imagefolder", f"data.dataset.root={folder(tmp / 'photos', corrupt=True)}"],
        ["cannot read image", "broken.png", "Remove or replace"]),
    "image folder missing (works today)": (
        lambda tmp: ["data=imagefolder", f"data.dataset.root={tmp / 'nowhere'}"], ["nowhere", "does not exist", "data.dataset.root"]),
    "trainer.max_epochs=abc (a bare AssertionError)": (
        lambda tmp: ["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "integer"]),
    "trainer.limit_train_batches=lots": (
        lambda tmp: ["trainer.limit_train_batches=lots"], ["trainer.limit_train_batches", "float"]),
    "unknown choice model=nope (works today)": (lambda tmp: ["model=nope"], ["nope", "supervised"]),
    "misspelt option (works today)": (lambda tmp: ["trainer.max_epoch=3"], ["max_epoch"]),
    "model.teacher.pretrained_file missing (was a backbone problem)": (
        lambda tmp: ["model=distill", "model.teacher.name=resnet18", f"model.teacher.pretrained_file={tmp / 'teacher.pth'}"],
        ["model.teacher.pretrained_file=", "teacher.pth", "no such file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_early_with_one_line(tmp_path, capsys, case):
    make, words = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    overrides = make(inputs)
    before = snapshot(ROOT, inputs)
    code, err = main_in_process(*overrides, run_dir=tmp_path / "run", capsys=capsys)
    assert code == 1, err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert "Traceback" not in err and 'File "' not in err
    assert snapshot(ROOT, inputs) == before  # nothing outside the run dir changed, inputs included
    assert not (tmp_path / "run" / "checkpoints").exists()  # it stopped before training


def test_trainer_gpu_without_cuda(tmp_path, capsys, monkeypatch):
    """Was Lightning's raw MisconfigurationException; the check runs before any data is read."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    code, err = main_in_process("trainer=gpu", run_dir=tmp_path / "run", capsys=capsys)
    assert code == 1 and "no CUDA device" in err and "trainer=cpu" in err and "Traceback" not in err


def test_download_without_network_says_it_failed(tmp_path, capsys, monkeypatch):
    """Was "... download is false"; now the download failed, why, and the offline fix."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "mnist"
    code, err = main_in_process("data=mnist", "data.dataset.download=true", f"data.dataset.root={root}",
                                run_dir=tmp_path / "run", capsys=capsys)
    assert code == 1 and "Traceback" not in err
    assert "download=true but the download" in err and "Name or service not known" in err
    assert "download is false" not in err and "data.dataset.download=false" in err


def test_fp16_on_cpu_records_the_precision_that_ran(tmp_path, capsys):
    code, err = main_in_process("amp=fp16", "debug=smoke", "callbacks=none", "trainer.limit_train_batches=1",
                                "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                                run_dir=tmp_path, capsys=capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"  # what Lightning ran, not "16-mixed"


def test_full_error_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from datamodules.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        main_in_process("trainer.max_epochs=abc", run_dir=tmp_path, capsys=capsys)


def _uint16_file(tmp):
    return ["data=npz", f"data.dataset.path={npz(tmp / 'deep.npz', digits_like(dtype=np.uint16, high=65536), THREE)}"]


@pytest.mark.parametrize("make, words", [
    (lambda tmp: ["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'"]),
    (lambda tmp: ["data=imagefolder"], ["data.dataset.root"]),  # a mandatory value left out (works today)
    (_uint16_file, ["uint16", "deep.npz"]),
], ids=["max_epochs=abc", "mandatory value", "npz uint16"])
def test_command_exits_1_with_one_line_and_no_traceback(tmp_path, make, words):
    """What a user sees from `python run.py ...` (the cases above run in-process for speed)."""
    overrides = make(tmp_path)
    before = snapshot(ROOT, tmp_path)
    proc = run_cli(*overrides, run_dir=tmp_path / "run", check=False, timeout=120)
    assert proc.returncode == 1
    assert all(word in proc.stderr for word in words), proc.stderr
    assert "Traceback" not in proc.stderr and "Error: " in proc.stderr
    after = snapshot(ROOT, tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(str(tmp_path / "run"))} == before


# ---------------------------------------------------------------------------------------------
# the checks behind them, directly


def test_integral_float_labels_and_small_ints_are_converted_exactly(tmp_path):
    import torch

    from datamodules.registry import load_dataset

    images = digits_like(dtype=np.uint16, high=256)  # 16-bit storage of 8-bit values: lossless
    splits = load_dataset({"name": "npz", "path": str(npz(tmp_path / "d.npz", images, THREE.astype(np.float64)))},
                          val_fraction=0.0, test_fraction=0.0)
    assert splits.num_classes == 3 and splits.train.labels.dtype == torch.int64
    assert np.bincount(splits.train.labels.numpy()).tolist() == [100] * 3
    # the 16-bit values were 0..255: kept as they are, not wrapped or rescaled
    assert sorted(splits.train.images.reshape(300, -1).sum(1).tolist()) == sorted(images.reshape(300, -1).sum(1).tolist())


def test_mixed_sizes_are_resized_when_image_size_is_set(tmp_path):
    from datamodules.registry import load_dataset

    root = folder(tmp_path / "photos", {("b", 3): (20, 12)})
    splits = load_dataset({"name": "imagefolder", "root": str(root)}, image_size=16)
    assert splits.shape == (3, 16, 16)


def test_missing_class_is_a_warning_where_labels_only_evaluate(tmp_path, caplog):
    from datamodules.registry import load_dataset

    spec = {"name": "npz", "path": str(npz(tmp_path / "d.npz", digits_like(), np.array([0, 1, 3])[THREE]))}
    with pytest.raises(DataFormatError, match="1 of 4 classes have no training image"):
        load_dataset(spec)
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(spec, labels_needed=False)  # SSL / clustering: labels only feed the kNN probe
    assert splits.num_classes == 4 and "no training image" in caplog.text


def test_ssl_datamodules_allow_a_missing_class():
    from datamodules.clustering import ClusteringDataModule
    from datamodules.labeled import LabeledDataModule
    from datamodules.multiview import MultiViewDataModule

    assert LabeledDataModule.labels_needed and not MultiViewDataModule.labels_needed
    assert not ClusteringDataModule.labels_needed


# ---------------------------------------------------------------------------------------------
# wandb without a network


def test_wandb_goes_offline_at_once_without_a_network(tmp_path, monkeypatch):
    import socket
    import time

    from conftest import compose
    from runner.wandb_run import prepare_wandb

    def unreachable(address, timeout=None, *args, **kwargs):
        assert timeout is not None and timeout <= 5  # never wandb's two-minute wait
        raise OSError("Network is unreachable")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    cfg = compose("logger=wandb", run_dir=tmp_path)
    started = time.monotonic()
    prepare_wandb(cfg)
    assert cfg.logger.wandb.offline is True and time.monotonic() - started < 5

    class Open:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Open())
    cfg = compose("logger=wandb", run_dir=tmp_path)
    prepare_wandb(cfg)
    assert cfg.logger.wandb.offline is False  # reachable: online as asked


# ---------------------------------------------------------------------------------------------
# SciPy 1.18: sqrtm without `disp`


def test_frechet_distance_with_sqrtm_without_disp(monkeypatch):
    from scipy import linalg

    from lightning_modules.evaluation import fid

    real_sqrtm = linalg.sqrtm

    def sqrtm_1_18(a):  # SciPy >= 1.18: no `disp` keyword, returns the array only
        out = real_sqrtm(a)
        return out[0] if isinstance(out, tuple) else out

    a = RNG.normal(size=(4000, 3))
    b = RNG.normal(size=(4000, 3)) * 2 + 1
    expected = fid.frechet_distance(a, b)
    monkeypatch.setattr(fid.linalg, "sqrtm", sqrtm_1_18)
    assert fid.frechet_distance(a, b) == pytest.approx(expected)
    # Gaussians N(0, I) and N(1, 4I) in 3-d: |mu|^2 + tr(I + 4I - 2*2I) = 3 + 3
    assert fid.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert np.isfinite(fid.frechet_distance(a[:3], b[:3]))  # singular covariances: regularised, finite


# ---------------------------------------------------------------------------------------------
# diagnostics subsets: seeded, stratified over the whole split


def test_stratified_subset_of_a_class_ordered_split():
    from datamodules.splits import stratified_subset

    labels = np.repeat(np.arange(10), 100)  # ordered by class, as an image folder's test split
    idx = stratified_subset(labels, 300, seed=0)
    assert len(idx) == 300 and len(set(idx)) == 300
    assert np.bincount(labels[idx], minlength=10).tolist() == [30] * 10  # the first 300 would be 3 classes
    assert np.array_equal(idx, stratified_subset(labels, 300, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, 300, seed=1))
    assert np.array_equal(stratified_subset(labels, 5000, seed=0), np.arange(1000))


def test_domain_adaptation_tsne_features_cover_every_class(tmp_path):
    """plots/tsne_before.png / tsne_after.png used the first 300 test images: one class on M->U folders."""
    import types

    from datamodules.pair import PairDataModule
    from lightning_modules.domain_adaptation import DomainAdaptation

    labels = np.repeat(np.arange(4), 50)  # npz test split ordered by class
    paths = {}
    for dom in ("source", "target"):
        tr = npz(tmp_path / f"{dom}_train.npz", digits_like(200), labels)
        te = npz(tmp_path / f"{dom}_test.npz", digits_like(200), labels)
        paths[dom] = {"name": "npz", "train_path": str(tr), "test_path": str(te)}
    dm = PairDataModule(source=paths["source"], target=paths["target"], batch_size=16)
    dm.setup()
    fake = types.SimpleNamespace(trainer=types.SimpleNamespace(datamodule=dm), training=False, device="cpu",
                                 tsne_points=40, eval=lambda: None, train=lambda mode: None)
    flat = lambda x: x.flatten(1)  # noqa: E731
    out = DomainAdaptation.collect_features(fake, {"source": flat, "target": flat})
    for dom in ("source", "target"):
        feats, ys = out[dom]
        assert isinstance(feats, np.ndarray) and len(feats) == 40
        assert np.bincount(ys, minlength=4).tolist() == [10] * 4  # the first 40 would all be class 0
