"""End to end through run.py: SimCLR and MoCo on two CPU processes (trainer=ddp_cpu), rotation in
one process; each writes results.json with the online-evaluation metrics."""
from __future__ import annotations

import pytest

from conftest import read_results, run_cli

TINY = ["data=digits", "data.image_size=16", "data.batch_size=32", "data.eval_batch_size=256",
        "+model.backbone.widths=[4,8,8]", "data.knn_bank_size=128", "callbacks.progress_bar=null",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1"]


# MoCo end to end under DDP (its queue, the shuffled BN); SimCLR's gathered NT-Xent is checked against one
# process in tests/test_ssl_ddp.py, without a run of its own.
@pytest.mark.parametrize("method,extra", [("moco", ["model.queue_size=256"])])
def test_ddp_cpu_runs_to_completion(method, extra, tmp_path):
    run_cli(f"model={method}", "trainer=ddp_cpu", "model.evaluation.tsne=false", "model.projector.hidden_dim=16",
            *TINY, *extra, run_dir=tmp_path, timeout=600)
    res = read_results(tmp_path)
    assert res["status"] == "completed"
    assert {"test/linear_acc", "test/knn_acc", "val/knn_acc", "train/loss"} <= set(res["metrics"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "encoder.pt").is_file()


def test_rotation_single_process_writes_metrics_and_tsne(tmp_path):
    run_cli("model=rotation", "model.evaluation.tsne_points=100", *TINY, run_dir=tmp_path, timeout=600)
    res = read_results(tmp_path)
    assert 0.0 <= res["metrics"]["test/knn_acc"] <= 1.0 and "test/linear_acc" in res["metrics"]
    assert (tmp_path / "plots" / "tsne_test.png").is_file()


@pytest.mark.parametrize("method,protocol", [(m, d) for m in ("simclr", "moco", "rotation") for d in ("cifar10", "stl10", "mnist")])
def test_presets_compose_and_build(method, protocol, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from conftest import ROOT

    monkeypatch.setenv("TRANSFERLAB_ROOT", str(ROOT))
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"experiment=ssl_{protocol}", f"model={method}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert get_class(model["datamodule"]["_target_"]).__name__ == "MultiViewDataModule"
    if protocol != "mnist":  # GPU presets: ResNets are slow to build on a shared CPU; composing is enough
        return
    from runner.build import RUNNER_KEYS

    kwargs = {k: v for k, v in model.items() if k not in RUNNER_KEYS}
    module = instantiate(kwargs, num_classes=10, in_chans=3, _convert_="partial")
    assert module.online.probe.fc.out_features == 10
