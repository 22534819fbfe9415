"""Run directories never lose a finished result: refusal, overwrite, lock, atomic checkpoints, CSV resume,
exit statuses of Ctrl-C and SIGTERM (runner/rundir.py, run.py's run())."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose, read_results, run_cli
from runner.rundir import LOCK_FILE, RunDirError, acquire_lock, release_lock

# 2 epochs of 4 steps on the embedded digits, deterministic, with the default checkpoints and the CSV and
# TensorBoard loggers.
TINY = ("data=digits", "data.batch_size=32", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2", "callbacks.progress_bar=null", "callbacks.learning_rate_monitor=null",
        "trainer.max_epochs=2", "deterministic=true", "logger=[csv,tensorboard]")


def run_in_process(*overrides: str, run_dir: Path):
    import run

    return run.run(compose(*TINY, *overrides, run_dir=run_dir))


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under the dir, by relative path, with the hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def ckpt_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # this test's own checkpoint


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """A completed run made by the command line (so .hydra/ and run.log are there too)."""
    run_dir = tmp_path_factory.mktemp("completed")
    run_cli(*TINY, run_dir=run_dir)
    assert read_results(run_dir)["status"] == "completed"
    return run_dir


@pytest.fixture
def copy_of(completed, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(completed, run_dir)
    return run_dir


# -- a dir that holds a run ----------------------------------------------------------------------------------


def test_rerun_into_a_completed_dir_is_refused_and_changes_nothing(copy_of):
    before = snapshot(copy_of)
    proc = run_cli(*TINY, "seed=1", run_dir=copy_of, check=False)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert f"hydra.run.dir={copy_of} holds a completed run" in message
    assert "ckpt_path=last" in message and "overwrite=true" in message
    assert "Traceback" not in proc.stderr
    assert snapshot(copy_of) == before  # .hydra/, run.log and the lock file included
    with pytest.raises(RunDirError, match="holds a completed run"):  # run() refuses too (in-process, sweeps)
        run_in_process("seed=1", run_dir=copy_of)
    assert snapshot(copy_of) == before


def test_a_sweep_into_a_sweep_dir_with_a_completed_job_is_refused(completed, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(completed, sweep / "0")
    before = snapshot(sweep)
    proc = run_cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"the job dir {sweep / '0'} of hydra.sweep.dir holds a "
                                                           f"completed run")
    assert snapshot(sweep) == before and sorted(p.name for p in sweep.iterdir()) == ["0"]


def test_dir_with_checkpoints_of_an_unfinished_run_is_refused(copy_of):
    (copy_of / "results.json").unlink()  # as after a kill -9
    with pytest.raises(RunDirError, match=r"holds an unfinished run \(results.json: missing; 2 checkpoint"):
        run_in_process(run_dir=copy_of)


def test_overwrite_true_replaces_the_completed_run(copy_of):
    with pytest.raises(RunDirError, match="keep one of the two"):
        run_in_process("overwrite=true", "ckpt_path=last", run_dir=copy_of)
    run_in_process("overwrite=true", "seed=1", "trainer.max_epochs=1", run_dir=copy_of)
    results = read_results(copy_of)
    assert results["status"] == "completed" and results["seed"] == 1
    assert sorted(p.name for p in (copy_of / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert [r["epoch"] for r in csv_rows(copy_of)] == ["0", "0", "1"]  # val, train, test of the new run only
    events = [p.name for p in (copy_of / "tensorboard").glob("events.out.tfevents.*")]
    assert events and all(f".{os.getpid()}." in name for name in events)  # written by this process only
    assert not (copy_of / LOCK_FILE).exists()


@pytest.mark.parametrize("resume", [True, False])
def test_a_second_run_that_fails_keeps_the_completed_results(copy_of, resume):
    results = (copy_of / "results.json").read_bytes()
    flags = ("ckpt_path=last", "trainer.max_epochs=3") if resume else ("overwrite=false",)
    with pytest.raises(Exception, match="not a registered dataset" if resume else "holds a completed run"):
        run_in_process(*flags, "data.dataset.name=nope", run_dir=copy_of)
    assert (copy_of / "results.json").read_bytes() == results
    assert not (copy_of / LOCK_FILE).exists()  # released on failure too


def test_sigterm_exits_143_and_keeps_the_completed_results(copy_of):
    results = (copy_of / "results.json").read_bytes()
    kill = ("+callbacks.kill._target_=runner.fault_tolerance.SignalAtStep", "+callbacks.kill.step=9")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process("ckpt_path=last", "trainer.max_epochs=3", *kill, run_dir=copy_of)
    assert exit_info.value.code == 143
    assert (copy_of / "results.json").read_bytes() == results
    assert ckpt_state(copy_of / "checkpoints" / "last.ckpt")["global_step"] == 9  # the interrupt's checkpoint


def test_a_failed_run_without_checkpoints_is_replaced(tmp_path):
    with pytest.raises(Exception, match="not a registered dataset"):
        run_in_process("data.dataset.name=nope", run_dir=tmp_path)
    assert read_results(tmp_path)["status"] == "failed"
    run_in_process("trainer.max_epochs=1", run_dir=tmp_path)  # nothing to lose: no flag needed
    assert read_results(tmp_path)["status"] == "completed"


# -- the lock -----------------------------------------------------------------------------------------------


def test_a_second_run_into_a_dir_in_use_fails_at_once(tmp_path):
    acquire_lock(tmp_path)  # this test process plays the first run
    try:
        started = time.time()
        proc = run_cli(*TINY, run_dir=tmp_path, check=False)
        elapsed = time.time() - started
    finally:
        release_lock(tmp_path)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert f"hydra.run.dir={tmp_path} is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no .hydra, no log, no results
    assert elapsed < 60  # start-up only, no training


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        run_in_process("trainer.max_epochs=1", run_dir=tmp_path)
    assert f"took over the lock {tmp_path / LOCK_FILE} left by pid {pid}" in caplog.text
    assert read_results(tmp_path)["status"] == "completed" and not (tmp_path / LOCK_FILE).exists()


# -- checkpoints and metrics across a kill and a resume ---------------------------------------------------

# Runs run.py with torch.save replaced by one that writes half of the DIE_AT_SAVE-th checkpoint, then SIGKILLs
# the process: a kill in the middle of writing a checkpoint file.
DYING_SAVE = """
import io, os, runpy, signal, sys
import torch
real_save, calls = torch.save, [0]
def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] != int(os.environ["DIE_AT_SAVE"]):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
sys.path.insert(0, {root!r})
sys.argv = [{run_py!r}, *sys.argv[1:]]
runpy.run_path({run_py!r}, run_name="__main__")
"""


def test_kill_during_a_checkpoint_write_then_the_same_command_resumes(tmp_path, completed):
    driver = tmp_path / "dying_save.py"
    driver.write_text(DYING_SAVE.format(root=str(ROOT), run_py=str(ROOT / "run.py")))
    run_dir = tmp_path / "run"
    # saves: epoch000.ckpt, last.ckpt (epoch 0), epoch001.ckpt, then last.ckpt of epoch 1: killed inside it
    proc = subprocess.run([sys.executable, str(driver), *TINY, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DIE_AT_SAVE": "4", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert zipfile.is_zipfile(last) and ckpt_state(last)["global_step"] == 4  # epoch 0's, whole
    assert (run_dir / "checkpoints" / "last.ckpt.tmp").is_file()  # the half-written one, beside it
    assert not (run_dir / "results.json").exists() and (run_dir / LOCK_FILE).is_file()  # the dead run's lock

    resumed = run_cli(*TINY, "ckpt_path=last", run_dir=run_dir)
    assert "took over the lock" in resumed.stdout + resumed.stderr
    results = read_results(run_dir)
    assert results["status"] == "completed" and ckpt_state(last)["global_step"] == 8
    assert not (run_dir / "checkpoints" / "last.ckpt.tmp").exists()
    reference = read_results(completed)["metrics"]  # the same command, never killed
    assert results["metrics"]["test/acc"] == reference["test/acc"]
    assert results["metrics"]["test/loss"] == reference["test/loss"]


def test_resume_appends_csv_rows_and_continues_tensorboard(copy_of):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    before = csv_rows(copy_of)
    assert [r["epoch"] for r in before if r["val/acc"]] == ["0", "1"]
    run_in_process("ckpt_path=last", "trainer.max_epochs=3", run_dir=copy_of)
    after = csv_rows(copy_of)
    old = [{k: row[k] for k in before[0]} for row in after[: len(before)]]
    assert old == before  # epochs 0 and 1 still there (a new column, if any, is empty in their rows)
    assert [r["epoch"] for r in after if r["val/acc"]] == ["0", "1", "2"]
    assert [r["step"] for r in after if r["test/acc"]] == ["8", "12"]  # the first run's test, then this one's
    events = EventAccumulator(str(copy_of / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [3, 7, 11]


# -- Ctrl-C ---------------------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_a_one_line_message(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.max_epochs=100000", f"hydra.run.dir={tmp_path}"]
    # the child gets the default Ctrl-C action even when pytest runs in the background (SIGINT ignored there)
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300  # start-up alone can take a minute on a loaded 2-core machine
        # training: an epoch is done (epochNNN.ckpt replaces the last one, so any of them)
        while not any((tmp_path / "checkpoints").glob("epoch*.ckpt")):
            assert proc.poll() is None and time.time() < deadline, "the run ended or did not start training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by Ctrl-C (SIGINT): rerun the same command with ckpt_path=last to continue from {last}")
    assert "SystemExit" not in stderr and "Traceback" not in stderr
    results = read_results(tmp_path)
    assert results["status"] == "interrupted" and results["error"] == "interrupted by Ctrl-C (SIGINT)"
    assert ckpt_state(last)["global_step"] >= 4 and not (tmp_path / LOCK_FILE).exists()
