"""Clustering methods beside k-means on the raw input: VAE + k-means, VAE + fuzzy c-means, DAIC on digit
images; ImageNet Lite0 features + VAE + (fuzzy) k-means beside k-means on the raw Lite0 features on
Office-31 photos. ACC (Hungarian), NMI, ARI of the test split, mean ± sd over seeds.

    python benchmarks/clustering_methods.py                                   # every row, seeds 0 1 2
    python benchmarks/clustering_methods.py --data mnist webcam --seeds 0
    python benchmarks/clustering_methods.py --report                          # the table from finished runs

Each method row is a whole `python run.py model=... <data> seed=S` (run dirs under
outputs/bench_clustering_methods/, reused when complete). The raw baselines are computed here with the
same k-means (k-means++ seeding, 5 restarts, k = classes) and scorer the methods use.
Writes benchmarks/results/clustering_methods.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import datetime
import json
import time

import torch

from benchmarks.run_many import ROOT, mean_sd, results_of, run_jobs
from datamodules.registry import load_dataset
from lightning_modules.components.cluster_metrics import cluster_scores
from lightning_modules.components.kmeans import kmeans

SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "outputs" / "bench_clustering_methods"
TABLE = ROOT / "benchmarks" / "results" / "clustering_methods.md"
LITE0 = "{name: tf_efficientnet_lite0, pretrained: true}"
OFFICE_SIZE = 112  # px: Lite0 features at a size the 2-core CPU computes in a minute per domain

DIGIT_DATA = {
    "mnist": ["data=npz", f"data.dataset.path={SHARED}/mnist_test.npz"],
    "digits": ["data=digits"],
    "digits_m": ["data=digits_m"],
}
OFFICE_DATA = {domain: ["data=office31", f"data.dataset.root={SHARED}/office31", f"data.dataset.domain={domain}",
                        f"data.image_size={OFFICE_SIZE}"] for domain in ("webcam", "amazon")}
DIGIT_METHODS = {
    "VAE (pixels) + k-means": ["model=vae_cluster"],
    "VAE (pixels) + fuzzy c-means": ["model=vae_cluster", "model.clusterer=fuzzy"],
    "DAIC (small_cnn)": ["model=daic"],
}
OFFICE_VAE = [f"model.encoders=[{LITE0}]", "model.vae.hidden=[512]", "model.vae.latent_dim=32"]
OFFICE_METHODS = {
    "Lite0 + VAE + k-means": ["model=vae_cluster", *OFFICE_VAE],
    "Lite0 + VAE + fuzzy c-means": ["model=vae_cluster", "model.clusterer=fuzzy", *OFFICE_VAE],
}


def data_spec(name: str) -> dict:
    """The dataset spec run.py builds from the overrides (for the in-process baselines)."""
    if name == "mnist":
        return {"name": "npz", "path": str(SHARED / "mnist_test.npz")}
    if name in OFFICE_DATA:
        return {"name": "office31", "root": str(SHARED / "office31"), "domain": name}
    return {"name": name}


@torch.no_grad()
def raw_baseline(name: str, seed: int) -> dict[str, float]:
    """k-means (k = classes) on the raw test inputs: pixels, or frozen ImageNet Lite0 features for photos."""
    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.feature_cache import compute_features

    office = name in OFFICE_DATA
    splits = load_dataset(data_spec(name), image_size=OFFICE_SIZE if office else None,
                          channels=3 if office else None)
    if office:
        encoder = create_backbone("tf_efficientnet_lite0", in_chans=3, pretrained=True).eval()
        cached = compute_features(encoder, splits.test, 64, torch.device("cpu"))
        x, y = cached.features, cached.labels
    else:
        items = [splits.test[i] for i in range(len(splits.test))]
        x, y = torch.stack([a for a, _ in items]).flatten(1), torch.tensor([int(b) for _, b in items])
    x = (x - x.mean(0)) / (x - x.mean(0)).pow(2).mean().sqrt()
    return cluster_scores(y, kmeans(x, splits.num_classes, seed=seed, n_init=5).assignments)


def jobs_for(datasets: list[str], seeds: list[int]) -> dict[str, list[str]]:
    jobs = {}
    for name in datasets:
        data, methods = (OFFICE_DATA[name], OFFICE_METHODS) if name in OFFICE_DATA else (DIGIT_DATA[name], DIGIT_METHODS)
        for label, overrides in methods.items():
            for seed in seeds:
                jobs[f"{name}__{slug(label)}__s{seed}"] = [*overrides, *data, f"seed={seed}"]
    return jobs


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def row(name: str, label: str, scores: list[dict[str, float]], seconds: float, command: str) -> str:
    cells = [mean_sd([s[k] for s in scores], 100, 1) for k in ("cluster_acc", "nmi", "ari")]
    return f"| {name} | {label} | {len(scores)} | {' | '.join(cells)} | {seconds:.0f} | `{command}` |"


def report(datasets: list[str], seeds: list[int], baselines: dict) -> list[str]:
    lines = ["| data | method | seeds | ACC | NMI | ARI | s per run | command (+ `seed=S`) |", "|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        if name in baselines:
            what = "k-means on raw Lite0 features" if name in OFFICE_DATA else "k-means on raw pixels"
            scores, seconds = baselines[name]
            lines.append(row(name, what, scores, seconds, "benchmarks/clustering_methods.py (in process)"))
        methods = OFFICE_METHODS if name in OFFICE_DATA else DIGIT_METHODS
        for label, overrides in methods.items():
            runs = [results_of(OUT / f"{name}__{slug(label)}__s{seed}") for seed in seeds]
            runs = [r for r in runs if r is not None]
            if not runs:
                continue
            scores = [{k: r["metrics"][f"test/{k}"] for k in ("cluster_acc", "nmi", "ari")} for r in runs]
            data = OFFICE_DATA.get(name) or DIGIT_DATA[name]
            command = "python run.py " + " ".join([*overrides, *data]).replace(str(SHARED), "../shared/data")
            lines.append(row(name, label, scores, sum(r["wall_time_s"] for r in runs) / len(runs), command))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=[*DIGIT_DATA, *OFFICE_DATA], choices=[*DIGIT_DATA, *OFFICE_DATA])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only the table, from finished runs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if not args.report:
        run_jobs(jobs_for(args.data, args.seeds), OUT, args.parallel)
    baselines = {}
    cache = OUT / "baselines.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    for name in args.data:
        key = f"{name}:{','.join(map(str, args.seeds))}"
        if key not in stored:
            started = time.time()
            stored[key] = [[raw_baseline(name, seed) for seed in args.seeds], 0.0]
            stored[key][1] = (time.time() - started) / len(args.seeds)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored))
        baselines[name] = stored[key]
    lines = [f"# Clustering methods\n\nMeasured {datetime.date.today()} by `python benchmarks/clustering_methods.py "
             f"--data {' '.join(args.data)} --seeds {' '.join(map(str, args.seeds))}` on the 2-core CPU (no GPU), "
             "shared with other jobs (wall times are not speeds). Test split of each dataset; k = number of classes.",
             "", *report(args.data, args.seeds, baselines), ""]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
