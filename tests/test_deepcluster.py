"""DeepCluster (lightning_modules/deepcluster.py) and its DataModule (datamodules/clustering.py)."""
from __future__ import annotations

import numpy as np
import torch

from conftest import read_results
from datamodules.clustering import ClusterBalancedSampler
from datamodules.registry import load_dataset
from lightning_modules.deepcluster import Sobel, clustering_scores


def test_sampler_draws_uniformly_over_clusters_and_is_rebuilt_each_epoch():
    sampler = ClusterBalancedSampler(1000, seed=0)
    assert sorted(sampler) == list(range(1000))  # before clustering: a permutation
    assignments = np.zeros(1000, dtype=int)
    assignments[:10], assignments[10:100] = 1, 2  # sizes 900, 10, 90
    sampler.set_assignments(assignments)
    first = list(sampler)
    drawn = np.bincount(assignments[first], minlength=3)
    assert len(first) == 1000 and drawn.min() >= 330 and drawn.max() <= 335  # ~N/3 each, however small
    assert list(sampler) == first  # the same order until the next clustering (same on every process)
    sampler.set_assignments(assignments)
    assert list(sampler) != first


def test_sobel_gives_two_gradient_channels():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical edge: horizontal gradient only
    out = Sobel(3)(x)
    assert out.shape == (1, 2, 8, 8)
    assert out[0, 0, 2:6, 3:5].abs().min() > 0 and out[0, 1, 2:6, 2:6].abs().max() == 0


def test_clustering_scores_are_perfect_on_separated_features():
    labels = torch.arange(4).repeat_interleave(25)
    features = torch.eye(4)[labels] * 5 + 0.01 * torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    scores = clustering_scores(features, labels, 4, pca_dim=None, whiten=False)
    assert scores["nmi"] > 0.999 and scores["ari"] > 0.999


def test_deepcluster_runs_saves_clusters_and_resumes(cli, tmp_path):
    common = ["model=deepcluster", "data=digits", "debug=smoke", "model.num_clusters=20", "model.pca_dim=16",
              "model.eval_pca_dim=8", "model.kmeans_iters=5", "data.knn_bank_size=200",
              "callbacks.progress_bar=null"]
    cli(*common, "trainer.max_epochs=2", run_dir=tmp_path)
    metrics = read_results(tmp_path)["metrics"]
    for key in ("test/nmi", "test/ari", "test/linear_acc", "train/nmi_prev_epoch", "train/empty_clusters"):
        assert key in metrics, key
    assert metrics["train/empty_clusters"] == 0 and 0 <= metrics["test/nmi"] <= 1
    assert (tmp_path / "cluster_sizes.png").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["deepcluster"]
    n_train = len(load_dataset({"name": "digits"}).train)
    assert len(state["assignments"]) == n_train and state["centroids"].shape == (20, 16)
    assert state["assignments"].max() < 20 and state["clusterings"] == 2
    # resume: one more epoch; the first clustering of the resumed run is compared with the saved one
    cli(*common, "trainer.max_epochs=3", "ckpt_path=last", run_dir=tmp_path)
    resumed = read_results(tmp_path)["metrics"]
    assert "train/nmi_prev_epoch" in resumed
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["deepcluster"]["clusterings"] == 3


def test_sobel_option_feeds_two_channels_to_the_backbone():
    from functools import partial

    from lightning_modules.deepcluster import DeepCluster

    model = DeepCluster({"name": "lenet"}, num_classes=10, in_chans=3, optimizer=partial(torch.optim.Adam), sobel=True,
                        num_clusters=7)
    assert model.backbone.stages[0][0].in_channels == 2
    assert model.features(torch.randn(2, 3, 28, 28)).shape == (2, 500) and model.head.out_features == 7


def test_training_views_come_from_the_per_rank_generator():
    """ClusteringDataModule draws its on-device views with `device_generator`, like MultiViewDataModule:
    the same run seed gives the same views (whatever the global RNG does in between), another rank other
    views."""
    from types import SimpleNamespace

    from datamodules.clustering import ClusteringDataModule

    def views(rank: int) -> torch.Tensor:
        torch.manual_seed(0)  # the run seed, as seed_everything sets it
        dm = ClusteringDataModule({"name": "digits"}, batch_size=16, augment={"backend": "batched"})
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        dm.trainer = SimpleNamespace(global_rank=rank, training=True)
        torch.rand(100)  # global RNG draws elsewhere must not change the views
        (view,), _, index = dm.on_after_batch_transfer(batch, 0)
        assert view.dtype == torch.float32 and view.shape[0] == len(index) == 16
        return view

    first = views(0)
    assert torch.equal(views(0), first)
    assert not torch.equal(views(1), first)
