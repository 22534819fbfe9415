"""Operations: sweep summaries, Optuna, submitit, dashboards, fault tolerance, bad input."""
from __future__ import annotations

import csv
import json
import signal
import time
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT, compose, read_results, run_cli, train_in_process
from datamodules.errors import ConfigError, DataFormatError

# A tiny supervised run on the embedded digits: 4 steps per epoch, one val batch, two test batches.
LIMITS = ("data.batch_size=32", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
          "trainer.limit_test_batches=2")
TINY = ("data=digits", *LIMITS, "callbacks.progress_bar=null", "callbacks.learning_rate_monitor=null")  # keeps checkpoints


def run_in_process(*overrides: str, run_dir: Path):
    """run.py's run() (train + status bookkeeping) on a composed config, in this process."""
    import run

    return run.run(compose(*overrides, run_dir=run_dir))


# -- sweep summary -----------------------------------------------------------------------------------


def write_job(sweep: Path, num: int, overrides: list[str], status: str | None, metrics=None, error=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        (job / "results.json").write_text(json.dumps({
            "status": status, "metrics": metrics or {}, "overrides": overrides, "wall_time_s": 10.0 + num,
            "error": error, "optimized_metric": "val/acc"}))


def test_summary_cli_rebuilds_a_partial_sweep(tmp_path, capsys):
    from runner import sweep_summary as summary

    write_job(tmp_path, 0, ["model=a", "seed=0"], "completed", {"test/acc": 0.5, "val/acc": 0.4})
    write_job(tmp_path, 1, ["model=a", "seed=1"], "completed", {"test/acc": 0.7, "val/acc": 0.6})
    write_job(tmp_path, 2, ["model=b", "seed=0"], "failed", error="NonFiniteLossError: train/loss is nan at step 3")
    write_job(tmp_path, 3, ["model=b", "seed=1"], None)  # still running
    summary.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert md == (tmp_path / "summary.md").read_text()
    assert "4 runs: 2 completed, 1 failed, 1 incomplete" in md
    assert "| `model=a` | 2/2 | 0.6000 +- 0.1414 (n=2) | 0.5000 +- 0.1414 (n=2) | 10.5 |" in md
    assert "| `model=b` | 0/2 | - | - | - |" in md
    assert "| 2 | `model=b` | 0 | failed | NonFiniteLossError: train/loss is nan at step 3 |" in md
    assert "| 3 | `model=b` | 1 | incomplete |" in md
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["configuration"] for r in rows] == ["model=a", "model=b"]
    assert float(rows[0]["test/acc_mean"]) == pytest.approx(0.6) and rows[0]["test/acc_n"] == "2"
    assert rows[1]["failed"] == "1" and rows[1]["incomplete"] == "1"


def test_summary_cli_rejects_a_dir_without_runs(tmp_path):
    from runner import sweep_summary as summary

    with pytest.raises(SystemExit):
        summary.main([str(tmp_path)])


def test_sweep_with_a_failing_job_runs_the_rest_and_lists_it(tmp_path):
    """data.batch_size=0 fails at once (jobs 0 and 1, run first); the batch_size=32 jobs still run."""
    proc = run_cli("-m", "data.batch_size=0,32", "seed=0,1", *LIMITS[1:], "trainer.max_epochs=1", "callbacks=none",
                   f"hydra.sweep.dir={tmp_path}", check=False)
    assert proc.returncode != 0  # the basic sweeper re-raises the failure once every job has run
    assert [read_results(tmp_path / str(i))["status"] for i in range(4)] == ["failed", "failed", "completed", "completed"]
    md = (tmp_path / "summary.md").read_text()
    assert "| `data.batch_size=32` | 2/2 | " in md and "(n=2)" in md
    assert "| `data.batch_size=0` | 0/2 |" in md
    assert "data.batch_size=0 must be >= 1" in md.split("## Runs that did not complete")[1]


# -- Optuna and submitit -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset,objective", [("dann_optuna", "val/source_acc"), ("simclr_optuna", "val/knn_acc")])
def test_optuna_presets_compose(preset, objective):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    assert cfg.model.optimized_metric == objective and "target" not in objective  # DA: no target labels
    assert cfg.optuna.trials == 20 and cfg.optuna.direction == "maximize" and cfg.optuna.params
    assert cfg.optuna.pruner._target_ == "optuna.pruners.MedianPruner" and "storage" in cfg.optuna
    assert cfg.hydra.mode is None or str(cfg.hydra.mode) != "RunMode.MULTIRUN"  # one command, trials as run dirs


@pytest.mark.slow
def test_optuna_study_of_two_trials_reports_best_value(tmp_path):
    proc = run_cli("hparams_search=dann_optuna", "optuna.trials=2", "model.tsne=false", "callbacks=none",
                   "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", run_dir=tmp_path)
    best = read_results(tmp_path)["best"]
    values = [read_results(tmp_path / f"trial{i:03d}")["metrics"]["val/source_acc"] for i in range(2)]
    assert best["value"] == pytest.approx(max(values))
    assert set(best["params"]) == {"model.optimizer.lr", "model.trade_off", "model.gamma"}
    assert "best trial:" in proc.stdout and "2 complete" in (tmp_path / "study.md").read_text()


@pytest.mark.slow
def test_submitit_local_sweep_runs_jobs_as_separate_processes(tmp_path):
    run_cli("-m", "hydra/launcher=local", "seed=0,1", *LIMITS, "trainer.max_epochs=1", "callbacks=none",
            f"hydra.sweep.dir={tmp_path}")
    assert sorted(read_results(tmp_path / str(i))["seed"] for i in range(2)) == [0, 1]
    job_logs = list((tmp_path / ".submitit").rglob("*_log.out"))
    assert len(job_logs) == 2  # one submitit job (process) per sweep job
    assert "2 runs: 2 completed" in (tmp_path / "summary.md").read_text()


def test_slurm_launcher_config_follows_the_trainer():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2",
                                                 "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["tasks_per_node"] == 4 == cfg.trainer.devices and launcher["nodes"] == 2
    assert launcher["timeout_min"] > 0 and launcher["gpus_per_node"] == 4


def test_on_slurm_lightning_requeues_on_the_signal_submitit_sends(monkeypatch):
    from runner.slurm import cluster_plugins
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
                       "SUBMITIT_PREEMPT_SIGNAL": "USR2"}.items():
        monkeypatch.setenv(key, value)
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)  # stands in for submitit's handler
    try:
        (env,) = cluster_plugins(OmegaConf.create({"auto_requeue": True}))
        assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # free for Lightning's handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.delenv("SLURM_NTASKS")
    assert cluster_plugins(OmegaConf.create({})) == []


# -- fault tolerance ----------------------------------------------------------------------------------


RESUMABLE = (*TINY, "trainer.max_epochs=2", "deterministic=true")  # 2 epochs of 4 steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    metrics, _ = train_in_process(*RESUMABLE, run_dir=tmp_path_factory.mktemp("straight"))
    return metrics


@pytest.mark.parametrize("step", [6, 4])  # mid epoch 2; the end of epoch 1
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, step):
    kill = ("+callbacks.kill._target_=runner.fault_tolerance.SignalAtStep", f"+callbacks.kill.step={step}")
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, once the current batch is done
        run_in_process(*RESUMABLE, *kill, run_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "interrupted"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == step
    resumed, _ = train_in_process(*RESUMABLE, "ckpt_path=last", run_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "completed"
    assert resumed["test/acc"] == uninterrupted["test/acc"] and resumed["test/loss"] == uninterrupted["test/loss"]


def test_ctrl_c_leaves_a_checkpoint_and_an_interrupted_status(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    # Python's Ctrl-C handler even when pytest was started in the background (which ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit, match="130"):  # Ctrl-C: exit status 130
            run_in_process(*TINY, "trainer.max_epochs=1", "+callbacks.kill._target_=runner.fault_tolerance.SignalAtStep",
                           "+callbacks.kill.step=2", "+callbacks.kill.signal=SIGINT", run_dir=tmp_path)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    results = read_results(tmp_path)
    assert results["status"] == "interrupted" and results["error"] == "interrupted by Ctrl-C (SIGINT)"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    from lightning_modules.base import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"train/loss is (nan|inf) at epoch 0, global step \d"):
        run_in_process(*TINY, "trainer.max_epochs=1", "model.optimizer.lr=1e30", run_dir=tmp_path)
    results = read_results(tmp_path)
    assert results["status"] == "failed" and "global step" in results["error"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    else:
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        assert not zipfile.is_zipfile(ckpt)
    with pytest.raises(ConfigError, match="ckpt_path=last: .*last.ckpt: not a readable PyTorch checkpoint"):
        train_in_process("ckpt_path=last", run_dir=tmp_path)


def test_corrupt_image_in_a_folder_fails_naming_the_file(tmp_path):
    from test_runner import write_folder

    write_folder(tmp_path / "photos", "flat")
    (tmp_path / "photos" / "square" / "5.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataFormatError, match=r"cannot read image .*square/5.png"):
        run_in_process("data=imagefolder", f"data.dataset.root={tmp_path / 'photos'}", "trainer.max_epochs=1",
                       "callbacks=none", run_dir=tmp_path / "run")
    results = read_results(tmp_path / "run")
    assert results["status"] == "failed" and "square/5.png" in results["error"]


# -- dashboards ----------------------------------------------------------------------------------------


def test_offline_wandb_run_dir_and_resume_reuse_the_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = (*TINY, "logger=wandb", "logger.wandb.project=transferlab-test")
    run_in_process(*common, "trainer.max_epochs=1", run_dir=tmp_path)
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    first = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(first) == 1
    # offline: config and metrics wait here for `wandb sync`; wandb's service process may still be
    # writing the file when finish() returns, so give it a few seconds
    record_file, record = first[0] / f"run-{run_id}.wandb", b""
    for _ in range(60):
        record = record_file.read_bytes()
        if b"data.batch_size=32" in record:
            break
        time.sleep(0.5)
    assert b"lightning_modules.supervised.Supervised" in record and b"data.batch_size=32" in record  # config, name
    assert "test/acc" in read_results(tmp_path)["metrics"]
    run_in_process(*common, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path)
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    # the same run, continued (wandb adds "-1" to the folder when both start within one second)
    assert len(runs) == 2 and all(r.name.removesuffix("-1").endswith(run_id) for r in runs)


def test_images_go_to_the_run_dir_and_to_tensorboard(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from lightning_modules.evaluation.images import log_image

    tb = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=[CSVLogger(tmp_path, name="csv"), tb], accelerator="cpu")
    module = pl.LightningModule()
    module.trainer = trainer
    grid = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8)
    assert log_image(module, "samples/grid", grid) == tmp_path / "plots" / "samples_grid.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    log_image(module, "curve", fig)
    tb.experiment.flush()
    assert (tmp_path / "plots" / "curve.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["images"]) == {"samples/grid", "curve"}


def test_results_record_commit_config_versions(tmp_path):
    train_in_process(*LIMITS, "trainer.max_epochs=1", "callbacks=none", run_dir=tmp_path)
    results = read_results(tmp_path)
    if (ROOT / ".git").exists():
        assert results["git_commit"] and len(results["git_commit"].removesuffix("-dirty")) == 40
    assert results["config"]["deterministic"] is False and "torch" in results["versions"]
