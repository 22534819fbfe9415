"""Pseudo-Label vs the supervised-only baseline on MNIST (../shared/data/mnist_test.npz: 8,000 train of
which num_labels labeled, 2,000 test), mean of seeds; writes benchmarks/results/pseudolabel.md.

    python benchmarks/pseudolabel.py                          # 100 and 1000 labels, 3 seeds
    python benchmarks/pseudolabel.py --labels 10 20 --seeds 0 # the notes' failure cases
"""
from __future__ import annotations

import sys
from pathlib import Path

# the repository root instead of this folder, whose scripts would shadow stdlib modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import datetime
import statistics

import torch

from benchmarks.run_many import ROOT, append_table, mean_sd, run_jobs

ARMS = {"pseudolabel": [], "supervised_only": ["model.alpha_f=0"]}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_pseudolabel")
    parser.add_argument("--table", type=Path, default=ROOT / "outputs" / "benchmarks" / "pseudolabel_table.md")
    args = parser.parse_args()

    jobs = {}
    for n in args.labels:
        for seed in args.seeds:
            for arm, extra in ARMS.items():
                jobs[f"n{n}_{arm}_s{seed}"] = ["experiment=pseudolabel_mnist", f"data.num_labels={n}",
                                               f"data.label_seed={seed}", f"seed={seed}", *extra]
    results = run_jobs(jobs, args.out, args.parallel)

    lines = [f"Measured {datetime.date.today()} on a 2-core CPU, no GPU (shared with other jobs), 1 thread per run.",
             "", "| labels | seeds | supervised-only test/acc | Pseudo-Label test/acc | PL pseudo-label acc (unlabeled) | wall s per PL run |",
             "|---|---|---|---|---|---|"]
    for n in args.labels:
        def stat(arm, key):
            return mean_sd([results[f"n{n}_{arm}_s{s}"]["metrics"][key] for s in args.seeds], 100, 2, each=True)
        wall = statistics.mean(results[f"n{n}_pseudolabel_s{s}"]["wall_time_s"] for s in args.seeds)
        lines.append(f"| {n} | {len(args.seeds)} | {stat('supervised_only', 'test/acc')} | {stat('pseudolabel', 'test/acc')} "
                     f"| {stat('pseudolabel', 'val/pseudo_acc')} | {wall:.0f} |")
    append_table(args.table, lines)


if __name__ == "__main__":
    main()
