"""Runs made of runs: k-fold cross-validation, pipelines (kill and resume), the main job, Optuna pruning and
resume, the sweep summary's plots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, read_results, run_cli

TINY = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "callbacks=none", "data.batch_size=32")


# -- k-fold cross-validation ---------------------------------------------------------------------------


def test_stratified_folds_partition_every_class_evenly():
    from datamodules.splits import stratified_folds

    labels = np.repeat(np.arange(3), [10, 7, 5])
    folds = stratified_folds(labels, 5, seed=1)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(labels)))  # disjoint, complete
    for fold in folds:  # each class split as evenly as it goes: 10 -> 2 a fold, 7 -> 1 or 2, 5 -> 1
        counts = np.bincount(labels[fold], minlength=3)
        assert counts[0] == 2 and counts[1] in (1, 2) and counts[2] == 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=2)))
    with pytest.raises(ValueError, match="smallest class size"):
        stratified_folds(labels, 6, seed=0)


def test_fold_k_tests_on_its_fold_and_trains_on_the_others():
    from datamodules.registry import RawSplits, carve_fold

    images, labels = np.arange(60).reshape(60, 1, 1, 1), np.repeat(np.arange(3), 20)
    raw = RawSplits(["a", "b", "c"], {"train": (images[:40], labels[:40]), "test": (images[40:], labels[40:])})
    tests = []
    for k in range(4):
        parts = carve_fold(raw, {"index": k, "folds": 4, "seed": 0}, val_fraction=0.1, split_seed=0)
        ids = {name: set(part[0].ravel().tolist()) for name, part in parts.items()}
        assert len(ids["test"]) == 15 and len(ids["val"]) == 6 and len(ids["train"]) == 39
        assert not (ids["test"] & ids["train"]) and not (ids["test"] & ids["val"]) and not (ids["val"] & ids["train"])
        tests.append(ids["test"])
    assert set().union(*tests) == set(range(60))  # every example is tested exactly once over the folds


def test_cv_folds_run_dirs_mean_and_std(tmp_path):
    proc = run_cli("cv.folds=3", "trainer.max_epochs=1", *TINY, run_dir=tmp_path)
    parent = read_results(tmp_path)
    folds = [read_results(tmp_path / f"fold{k}") for k in range(3)]
    values = [f["metrics"]["test/acc"] for f in folds]
    assert [f["config"]["cv"]["fold"] for f in folds] == [0, 1, 2] and all(f["status"] == "completed" for f in folds)
    assert parent["children"] == "folds" and parent["metrics"]["test/acc"] == pytest.approx(np.mean(values))
    assert parent["metrics_std"]["test/acc"] == pytest.approx(np.std(values, ddof=1))
    assert "3-fold cross-validation" in proc.stdout
    again = run_cli("cv.folds=3", "trainer.max_epochs=1", *TINY, run_dir=tmp_path)  # the same command: reused
    assert again.stderr.count("completed earlier, reused") + again.stdout.count("completed earlier, reused") == 3


@pytest.mark.parametrize("cv,kind,message", [
    ({"folds": 1}, "single", "cv.folds=1 must be an integer >= 2"),
    ({"folds": 3, "fold": 3}, "single", "cv.fold=3 must be one of 0..2"),
    ({"fold": 0}, "single", "cv.fold=0 needs cv.folds"),
    ({"folds": 5}, "pair", "cannot fold"),
])
def test_bad_cv_options_are_named(cv, kind, message):
    from omegaconf import OmegaConf

    from datamodules.errors import ConfigError
    from runner.protocols.crossval import check_cv

    with pytest.raises(ConfigError, match=message):
        check_cv(OmegaConf.create({"cv": {"folds": None, "fold": None, **cv}}), kind)


# -- pipelines and the main job ------------------------------------------------------------------------


def test_no_arguments_is_the_main_job_and_any_other_command_a_single_run():
    import run

    assert run.command_line([]) == ["pipeline=main"]
    assert run.command_line(["model=dann"]) == ["model=dann"]


def test_main_job_killed_midway_resumes_without_redoing_finished_stages(tmp_path):
    """`pipeline=main` with a reduced budget, SIGKILLed once its first stage has completed; the same command
    then finishes it, reusing the first stage, and prints the comparison and writes the plot."""
    args = [sys.executable, str(ROOT / "run.py"), "pipeline=main", "trainer.max_epochs=2", *TINY,
            f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    source = tmp_path / "source" / "results.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (source.is_file() and "completed" in source.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(source.read_text())["status"] == "completed"
    assert not (tmp_path / "scratch" / "results.json").is_file()  # killed before the last stage
    before = source.stat().st_mtime_ns

    done = run_cli("pipeline=main", "trainer.max_epochs=2", *TINY, run_dir=tmp_path)
    out = done.stdout + done.stderr
    assert "source: completed earlier, reused" in out and source.stat().st_mtime_ns == before
    assert all(read_results(tmp_path / s)["status"] == "completed" for s in ("finetune", "scratch"))
    finetune = read_results(tmp_path / "finetune")
    assert any(o == f"model.backbone.checkpoint={tmp_path / 'source' / 'encoder.pt'}" for o in finetune["overrides"])
    parent = read_results(tmp_path)
    assert parent["children"] == "stages" and [s["name"] for s in parent["stages"]] == ["source", "finetune", "scratch"]
    assert "test/acc: finetune" in done.stdout and " vs scratch " in done.stdout
    assert (tmp_path / "pipeline.png").stat().st_size > 0 and (tmp_path / "summary.md").is_file()


def test_a_reused_stage_must_have_run_with_the_same_settings(tmp_path):
    import run
    from runner.protocols.children import check_same_run
    from runner.rundir import RunDirError

    check_same_run(["a=1", "b=2", "ckpt_path=last"], ["b=2", "a=1"], tmp_path)
    with pytest.raises(RunDirError, match="differing: b=2 b=3"):
        check_same_run(["a=1", "b=2"], ["a=1", "b=3"], tmp_path)
    assert run.MAIN_JOB == "pipeline=main"


def test_pipeline_stages_expand_and_hand_over_by_reference(tmp_path):
    from omegaconf import OmegaConf

    from datamodules.errors import ConfigError
    from runner.protocols.pipeline import expand, input_overrides, merge_overrides

    spec = OmegaConf.load(ROOT / "conf" / "pipeline" / "ssl_finetune.yaml").pipeline
    stages = expand(spec)
    assert [s.name for s in stages] == ["pretrain", *(f"{k}/labels_per_class={v}" for k in ("finetune", "scratch")
                                                      for v in (1, 5, 10, "null"))]
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "encoder.pt").write_bytes(b"x")
    assert input_overrides(stages[1], tmp_path) == [f"model.backbone.checkpoint={tmp_path}/pretrain/encoder.pt"]
    assert input_overrides(stages[-1], tmp_path) == []  # scratch: no encoder
    assert merge_overrides(["a=1", "model=x"], ["model=y", "++b=2"], ["b=3"]) == ["a=1", "model=y", "b=3"]
    with pytest.raises(ConfigError, match="earlier stages"):
        expand(OmegaConf.create({"stages": {"b": {"inputs": {"model.backbone.checkpoint": "a/encoder.pt"}}}}))


# -- Optuna ------------------------------------------------------------------------------------------------


def test_optuna_study_prunes_and_a_second_command_resumes_it(tmp_path):
    import optuna

    assert int(optuna.__version__.split(".")[0]) >= 4
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["optuna.params={model.optimizer.lr:{low:0.00001,high:0.01,log:true}}", "optuna.pruner.n_startup_trials=1",
              "optuna.pruner.n_warmup_steps=0", f"optuna.storage={storage}", "optuna.study_name=t",
              "trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
              "trainer.limit_test_batches=1", "callbacks=none", "data.batch_size=32"]
    run_cli("optuna.trials=3", *common, run_dir=tmp_path / "first")
    second = run_cli("optuna.trials=4", *common, run_dir=tmp_path / "second")
    study = optuna.load_study(study_name="t", storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    assert sorted(p.name for p in (tmp_path / "second").glob("trial*")) == ["trial003"]  # only the missing one ran
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        status = read_results(run_dir)["status"]
        assert status == {"COMPLETE": "completed", "PRUNED": "pruned"}[t.state.name]
        if t.state.name == "PRUNED":  # stopped early: fewer epochs reported than the run's 3
            assert max(t.intermediate_values) < 2
    pruned = ", ".join(str(t.number) for t in study.trials if t.state.name == "PRUNED")
    assert f"pruned trials: {pruned}" in second.stdout
    parent = read_results(tmp_path / "second")
    assert parent["best"]["value"] == pytest.approx(study.best_value) and parent["children"] == "trials"


# -- the sweep summary's plots -----------------------------------------------------------------------------


def _results(run_dir: Path, **payload) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", **payload}))


def test_sweep_summary_draws_bars_and_pools_pipeline_stages_over_seeds(tmp_path):
    from runner.sweep_summary import collect, write_summary

    for seed in range(3):
        job = tmp_path / str(seed)
        curve = {"x": "data.labels_per_class", "metric": "test/acc",
                 "series": {"finetune": {"1": [0.5 + seed / 100], "all": [0.9]}, "scratch": {"1": [0.2], "all": [0.9]}}}
        _results(job, children="stages", overrides=["pipeline=p", f"seed={seed}"], metrics={}, curve=curve)
        encoder = f"model.backbone.checkpoint={job}/pretrain/encoder.pt"  # differs by seed: not part of the row
        for stage, acc in (("finetune", 0.5 + seed / 100), ("scratch", 0.2)):
            _results(job / stage, overrides=[f"model={stage}", f"seed={seed}", encoder], metrics={"test/acc": acc})
        _results(job / "cv", children="folds", overrides=["cv.folds=2", f"seed={seed}"], metrics={"test/acc": 0.7})
        _results(job / "cv" / "fold0", overrides=["cv.folds=2", "cv.fold=0", f"seed={seed}"], metrics={"test/acc": 0.6})
    jobs = collect(tmp_path)
    assert sorted({j.dir.name for j in jobs}) == ["cv", "finetune", "scratch"]  # no pipeline parent, no fold
    md = write_summary(tmp_path).read_text()
    assert "| `finetune` | 3/3 | 0.5100 +- 0.0100 (n=3)" in md and "| `scratch` | 3/3 |" in md
    assert (tmp_path / "summary.png").stat().st_size > 0 and (tmp_path / "curve.png").stat().st_size > 0


def test_a_run_of_runs_refuses_ddp_by_name():
    from omegaconf import OmegaConf

    from datamodules.errors import ConfigError
    from runner.protocols import protocol_of

    cfg = OmegaConf.create({"cv": {"folds": 3, "fold": None}, "trainer": {"strategy": "ddp"}})
    with pytest.raises(ConfigError, match="trainer.strategy=ddp: a pipeline, cv.folds and optuna.trials"):
        protocol_of(cfg)
    cfg.cv.fold = 0  # one fold by itself (python run.py cv.folds=3 cv.fold=0) is a plain run
    assert protocol_of(cfg) is None


def test_options_of_the_pipeline_stay_with_it_and_the_rest_reach_every_stage(tmp_path):
    from conftest import compose
    from runner.protocols.children import parent_overrides

    compose("pipeline=ssl_finetune", "pipeline.pretrain_epochs=5", "seed=2", "trainer.max_epochs=1", run_dir=tmp_path)
    assert parent_overrides(drop=("pipeline",)) == ["seed=2", "trainer.max_epochs=1"]
