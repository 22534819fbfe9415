"""DeepCluster vs k-means on raw pixels and on a random-init encoder of the same architecture
(test/nmi, test/ari; mean of seeds); appends its table to outputs/benchmarks/clustering_table.md (copied by hand into benchmarks/results/clustering.md with notes).

    python benchmarks/clustering.py                        # MNIST (../shared/data) and digits, 3 seeds
    python benchmarks/clustering.py --data digits --seeds 0

All three are scored by the same function (`deepcluster.clustering_scores`: PCA-32 + whitening,
L2 normalisation, k-means with k = 10 classes) on the same test split; raw pixels are also scored
with plain k-means on the pixels.
"""
from __future__ import annotations

import sys
from pathlib import Path

# the repository root instead of this folder, whose scripts would shadow stdlib modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import datetime
import statistics
import time

import torch

from benchmarks.run_many import ROOT, append_table, mean_sd, run_jobs

from datamodules.registry import load_dataset  # noqa: E402
from lightning_modules.deepcluster import clustering_scores  # noqa: E402

DATA = {
    "mnist": ("experiment=deepcluster_mnist", {"name": "npz", "path": str(ROOT.parent / "shared" / "data" / "mnist_test.npz")}),
    "digits": ("experiment=deepcluster_digits", {"name": "digits"}),
}


def raw_pixel_scores(spec: dict, seed: int) -> dict[str, dict[str, float]]:
    test = load_dataset(spec).test
    pixels = test.images.flatten(1).float() / 127.5 - 1
    return {"raw pixels, plain k-means": clustering_scores(pixels, test.labels, 10, None, False, seed=seed),
            "raw pixels, PCA-32-whitened": clustering_scores(pixels, test.labels, 10, 32, True, seed=seed)}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["mnist", "digits"], choices=sorted(DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_clustering")
    parser.add_argument("--table", type=Path, default=ROOT / "outputs" / "benchmarks" / "clustering_table.md")
    args = parser.parse_args()

    lines = [f"Measured {datetime.date.today()} on a 2-core CPU, no GPU (shared with other jobs), 1 thread per run.", "",
             "| data | method | seeds | test/nmi | test/ari | epochs | wall s per run |", "|---|---|---|---|---|---|---|"]
    for name in args.data:
        preset, spec = DATA[name]
        jobs = {}
        for seed in args.seeds:
            jobs[f"{name}_deepcluster_s{seed}"] = [preset, f"seed={seed}"]
            jobs[f"{name}_random_init_s{seed}"] = [preset, f"seed={seed}", "model.train_encoder=false", "trainer.max_epochs=1",
                                                   "trainer.check_val_every_n_epoch=1"]
        results = run_jobs(jobs, args.out, args.parallel)
        for method in ("deepcluster", "random_init"):
            runs = [results[f"{name}_{method}_s{s}"] for s in args.seeds]
            label = {"deepcluster": "DeepCluster (LeNet)", "random_init": "k-means on random-init LeNet"}[method]
            lines.append(f"| {name} | {label} | {len(runs)} | {mean_sd([r['metrics']['test/nmi'] for r in runs])} | "
                         f"{mean_sd([r['metrics']['test/ari'] for r in runs])} | {runs[0]['config']['trainer']['max_epochs']} | "
                         f"{statistics.mean(r['wall_time_s'] for r in runs):.0f} |")
        started = time.time()
        raw = [raw_pixel_scores(spec, seed) for seed in args.seeds]
        wall = (time.time() - started) / len(args.seeds)
        for label in raw[0]:
            lines.append(f"| {name} | k-means on {label} | {len(raw)} | {mean_sd([r[label]['nmi'] for r in raw])} | "
                         f"{mean_sd([r[label]['ari'] for r in raw])} | - | {wall:.0f} |")
    append_table(args.table, lines)


if __name__ == "__main__":
    main()
