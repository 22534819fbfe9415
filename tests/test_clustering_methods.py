"""Clustering beyond DeepCluster: the metrics, fuzzy c-means, the VAE's ELBO terms, DAIC's pair selection
(each against a hand case), the choice of k, and the two methods end to end (model=vae_cluster, model=daic)."""
from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.components.cluster_metrics import cluster_scores, hungarian_accuracy, k_selection
from lightning_modules.components.fuzzy_cmeans import fuzzy_cmeans, memberships
from lightning_modules.components.pairwise_clustering import (
    LAMBDA_END, daic_loss, label_features, lambda_at, select_pairs, thresholds,
)
from lightning_modules.components.vae import VectorVAE, gaussian_nll, kl_standard_normal
from lightning_modules.components.kmeans import kmeans
from tests.conftest import read_results


def _blobs(centres, n=40, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor(centres, dtype=torch.float32)
    labels = torch.arange(len(centres)).repeat_interleave(n)
    return centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=g), labels


# ---- metrics ---------------------------------------------------------------------------------------
def test_hungarian_accuracy_on_a_hand_case():
    truth = [0, 0, 1, 1, 2, 2]
    # clusters renamed 0->1, 1->0, 2->2, one image of class 2 put in the cluster of class 1
    assert hungarian_accuracy(truth, [1, 1, 0, 0, 2, 0]) == pytest.approx(5 / 6)
    assert hungarian_accuracy(truth, [7, 7, 3, 3, 5, 5]) == 1.0  # any cluster ids
    # more clusters than classes: the unmatched cluster counts as wrong
    assert hungarian_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 2, 1, 1, 1]) == pytest.approx(5 / 6)
    scores = cluster_scores(torch.tensor(truth), torch.tensor([2, 2, 0, 0, 1, 1]))
    assert scores == {"cluster_acc": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}


def test_k_selection_finds_the_number_of_separated_blobs():
    x, _ = _blobs([[0, 0], [6, 0], [0, 6], [6, 6]], n=30, spread=0.4)
    rows = k_selection(x, range(2, 8))
    assert max(rows, key=lambda r: r["silhouette"])["k"] == 4
    drops = {r["k"]: r["objective_drop"] for r in rows}
    assert drops[4] > 0.5 and drops[5] < 0.5  # the elbow: past k=4 a cluster buys little


# ---- fuzzy c-means ---------------------------------------------------------------------------------
def test_fuzzy_memberships_sum_to_one_and_recover_separated_blobs():
    x, labels = _blobs([[0, 0], [5, 0], [0, 5]])
    result = fuzzy_cmeans(x, 3, m=2.0, seed=1)
    assert torch.allclose(result.memberships.sum(1), torch.ones(len(x)), atol=1e-5)
    assert (result.memberships >= 0).all()
    assert hungarian_accuracy(labels, result.assignments) == 1.0
    # the same centres as k-means on blobs this clean
    centres = sorted(result.centres.tolist())
    assert torch.allclose(torch.tensor(centres), torch.tensor(sorted(kmeans(x, 3).centroids.tolist())), atol=0.15)


def test_fuzzy_membership_formula_on_a_hand_case():
    centres = torch.tensor([[0.0], [4.0]])
    # x = 1: distances 1 and 3; u_1 = 1 / (1 + (1/3)^(2/(m-1))) = 1 / (1 + 1/9) for m = 2
    u = memberships(torch.tensor([[1.0], [2.0], [4.0]]), centres, m=2.0)
    assert u[0, 0].item() == pytest.approx(0.9)
    assert u[1].tolist() == pytest.approx([0.5, 0.5])  # the boundary point: no preference
    assert u[2].tolist() == [0.0, 1.0]  # on a centre
    # larger m spreads the memberships towards 1/c
    assert memberships(torch.tensor([[1.0]]), centres, m=3.0)[0, 0] < 0.9


def test_fuzzy_cmeans_rejects_a_crisp_exponent():
    from datamodules.errors import ConfigError

    with pytest.raises(ConfigError, match="m=1.0 must be > 1"):
        fuzzy_cmeans(torch.randn(10, 2), 2, m=1.0)


# ---- VAE ---------------------------------------------------------------------------------------------
def test_vae_elbo_terms_against_closed_forms():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.3]])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_standard_normal(mu, logvar), expected, atol=1e-6)
    assert kl_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    x, recon = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 4.0]])
    assert gaussian_nll(x, recon).item() == pytest.approx(0.5 * (4 + 1))
    # the training terms are those of the forward pass; the plain autoencoder has no KL and no noise
    torch.manual_seed(0)
    vae = VectorVAE(6, latent_dim=2, hidden=[8])
    terms = vae(torch.randn(5, 6))
    assert terms["mu"].shape == (5, 2) and terms["kl"] > 0 and terms["recon"] > 0
    ae = VectorVAE(6, latent_dim=2, hidden=[8], kind="ae")
    x = torch.randn(5, 6)
    assert ae(x)["kl"].item() == 0.0 and torch.equal(ae(x)["recon"], ae(x)["recon"])


# ---- DAIC --------------------------------------------------------------------------------------------
def test_daic_thresholds_and_curriculum():
    assert thresholds(0.0) == pytest.approx((0.95, 0.455))
    upper, lower = thresholds(lambda_at(1.0))
    assert upper == pytest.approx(lower) and LAMBDA_END == pytest.approx(0.45)
    assert thresholds(lambda_at(0.5))[0] < 0.95 and thresholds(lambda_at(0.5))[1] > 0.455  # the gap shrinks
    assert lambda_at(2.0) == LAMBDA_END and lambda_at(-1.0) == 0.0


def test_daic_pair_selection_and_loss_on_a_hand_case():
    l = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit rows, non-negative
    sim = l @ l.T  # [[1, .8, 0], [.8, 1, .6], [0, .6, 1]]
    positive, negative = select_pairs(sim, upper=0.9, lower=0.5)
    assert positive.tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    assert negative.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    loss, stats = daic_loss(l, upper=0.9, lower=0.5)
    eps = 1e-7
    # similar pairs: -log(1) each (clamped); dissimilar: -log(1 - 0) twice; all / 9
    expected = (3 * -math.log(1 - eps) + 2 * -math.log(1 - eps)) / 9
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss, _ = daic_loss(l, upper=0.7, lower=0.7)  # now the .8 pairs are similar, the .6 pairs dissimilar
    expected = (2 * -math.log(0.8) + 2 * -math.log(1 - 0.6) + 2 * -math.log(1 - eps) + 3 * -math.log(1 - eps)) / 9
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["positive_pairs"] == pytest.approx(3 / 9) and stats["negative_pairs"] == pytest.approx(2 / 9)
    f = label_features(torch.randn(4, 5))
    assert (f >= 0).all() and torch.allclose(f.norm(dim=1), torch.ones(4))


def _daic_worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        from lightning_modules.components.distributed import gather_with_grad

        torch.manual_seed(0)
        layer, x = torch.nn.Linear(6, 4), torch.randn(8, 6)
        f = label_features(layer(x[rank * 4:(rank + 1) * 4]))
        loss, _ = daic_loss(f, 0.8, 0.5, others=gather_with_grad(f))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
        dist.all_reduce(grads)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            torch.save({"loss": mean / 2, "grads": grads / 2}, out_path)
    finally:
        dist.destroy_process_group()


def test_daic_pairs_span_the_global_batch_under_ddp(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_daic_worker, args=(port, str(tmp_path / "out.pt")), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(6, 4), torch.randn(8, 6)
    loss, _ = daic_loss(label_features(layer(x)), 0.8, 0.5)
    loss.backward()
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(out["grads"], torch.cat([p.grad.flatten() for p in layer.parameters()]), atol=1e-6)


# ---- the methods end to end ------------------------------------------------------------------------
def _pixel_kmeans_acc(split) -> float:
    x = torch.stack([split[i][0] for i in range(len(split))]).flatten(1)
    y = torch.tensor([int(split[i][1]) for i in range(len(split))])
    return hungarian_accuracy(y, kmeans(x, 10, n_init=3).assignments)


def test_vae_cluster_fuzzy_writes_its_artefacts(cli, tmp_path):
    # two encoders (pixels and another run's encoder.pt): the notes' ensemble of VAEs, latents concatenated
    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.encoder_io import save_encoder

    (tmp_path / "other_run").mkdir()
    encoder = save_encoder(create_backbone("small_cnn", in_chans=1), tmp_path / "other_run" / "encoder.pt")
    cli("model=vae_cluster", "data=digits", "trainer.max_epochs=1", "model.clusterer=fuzzy", "model.k_range=[9,11]",
        f"model.encoders=[pixels,{{checkpoint: {encoder}}}]", "model.vae.hidden=[64]", "callbacks.progress_bar=null",
        run_dir=tmp_path)
    metrics = read_results(tmp_path)["metrics"]
    assert {"test/cluster_acc", "test/nmi", "test/ari", "val/nmi"} <= set(metrics)
    saved = dict(**__import__("numpy").load(tmp_path / "memberships.npz"))
    assert saved["memberships"].shape[1] == 10
    assert abs(saved["memberships"].sum(1) - 1).max() < 1e-4
    for plot in ("clusters", "cluster_sizes", "memberships", "k_selection"):
        assert (tmp_path / "plots" / f"{plot}.png").is_file(), plot
    report = json.loads((tmp_path / "k_selection.json").read_text())
    assert [r["k"] for r in report["rows"]] == [9, 10, 11] and report["best_silhouette_k"] in (9, 10, 11)


def test_daic_learns_clusters_beyond_its_random_network(cli, tmp_path):
    """DAIC on embedded digits against the argmax clustering of the same network at random init
    (the pair loss is what makes the label features cluster). Measured: ~0.79 ACC after 30 epochs."""
    common = ["model=daic", "data=digits", "callbacks.progress_bar=null"]
    cli(*common, "trainer.max_epochs=5", run_dir=tmp_path / "daic")
    cli(*common, "train=false", run_dir=tmp_path / "random")
    trained = read_results(tmp_path / "daic")["metrics"]
    random = read_results(tmp_path / "random")["metrics"]
    assert trained["test/cluster_acc"] > random["test/cluster_acc"] + 0.2, (trained, random)
    assert trained["test/nmi"] > 0.5 and trained["test/clusters_used"] >= 8
    assert (tmp_path / "daic" / "plots" / "clusters.png").is_file()


def test_vae_cluster_under_ddp_clusters_the_latents_of_both_processes(cli, tmp_path):
    """Two CPU processes: each scores the k-means of all test latents (gathered, clustered on rank 0),
    close to one process's score on the same budget."""
    common = ["model=vae_cluster", "data=digits", "trainer.max_epochs=2", "model.vae.hidden=[64]",
              "callbacks.progress_bar=null"]
    cli(*common, "trainer=ddp_cpu", run_dir=tmp_path / "ddp")
    cli(*common, run_dir=tmp_path / "one")
    ddp, one = (read_results(tmp_path / name)["metrics"] for name in ("ddp", "one"))
    assert ddp["test/cluster_acc"] > 0.5 and abs(ddp["test/cluster_acc"] - one["test/cluster_acc"]) < 0.15, (ddp, one)
