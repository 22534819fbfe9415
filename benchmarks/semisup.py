"""Supervised-only, Pseudo-Label, Mean Teacher and FixMatch with the same labels and the same steps;
writes a table (mean ± sd over the seeds that finished) to benchmarks/results/semisup.md (appended).

Rows: MNIST (../shared/data/mnist_test.npz split as `experiment=pseudolabel_mnist` does: 8,000 training
images, 2,000 test, no val split) with 10, 100 and 1,000 labels; `digits_m` with 100 labels; Office-31 webcam
(../shared/data/office31, stratified split_seed 0: 556 train / 80 val / 159 test photos) with 3 labels per
class (93) on the ImageNet EfficientNet-Lite0 at 64 px; and the failure cases on MNIST: class 7 without
labels (100 labels, `data.missing_classes=[7]`; row `mnist_miss7`), 2 labels per class (`--labels 20`).
Every run of a row: the same steps of 32 labeled + 128 unlabeled images (FixMatch: data.mu=4) on the digit rows
(500 steps); on Office-31 `OFFICE_STEPS` steps of 32 labeled + 64 unlabeled (FixMatch: data.mu=2). label_seed = seed. Jobs run seed by seed, so a cut-short
benchmark still has whole rows for the first seeds; finished runs are reused.

    nice -n 10 python benchmarks/semisup.py --seeds 0 1 2 --parallel 2
    nice -n 10 python benchmarks/semisup.py --labels --digits-m --office31 93 --arms fixmatch   # one arm, one row
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import datetime
import os
import statistics

from benchmarks.run_many import ROOT, mean_sd, results_of, run_job

ARMS = {  # name -> overrides (same labels, steps, batches)
    "supervised_only": ["model=pseudolabel", "model.alpha_f=0"],
    "pseudolabel": ["model=pseudolabel"],
    "mean_teacher": ["model=mean_teacher"],
    "fixmatch": ["model=fixmatch"],
}
BUDGET = ["data.batch_size=32", "data.unlabeled_batch_size=128", "trainer.max_epochs=1000", "++trainer.max_steps=500"]
MNIST = ["data=npz", "data.dataset.path=${paths.shared_data_dir}/mnist_test.npz", "data.val_fraction=0",
         "data.test_fraction=0.2", "data.split_seed=0", "trainer.limit_val_batches=4"]
FIXMATCH_MU = {"fixmatch": ["data.mu=4", "data.unlabeled_batch_size=null"]}  # 4 x 32 = 128 unlabeled per step
# Office-31: a Lite0 step costs ~30x a LeNet step on the CPU, so 200 steps of 32 labeled + 64 unlabeled photos
# (FixMatch: mu=2); 3 seeds x 4 arms fit in about an hour of two cores.
OFFICE_STEPS = 200
OFFICE31 = ["data=office31", "data.dataset.root=${paths.shared_data_dir}/office31", "data.dataset.domain=webcam",
            "model.backbone.name=tf_efficientnet_lite0", "model.backbone.pretrained=true", "data.image_size=64",
            "data.batch_size=32", "data.unlabeled_batch_size=64", "trainer.max_epochs=1000",
            f"++trainer.max_steps={OFFICE_STEPS}", "trainer.check_val_every_n_epoch=25"]
ROWS = {  # name -> (overrides, per-arm extra)
    "mnist": ([*MNIST, *BUDGET], FIXMATCH_MU),
    "mnist_miss7": ([*MNIST, *BUDGET, "data.missing_classes=[7]"], FIXMATCH_MU),
    "digits_m": (["data=digits_m", *BUDGET], FIXMATCH_MU),
    "office31_webcam": (OFFICE31, {"fixmatch": ["data.mu=2", "data.unlabeled_batch_size=null",
                                                "model.weak.flip_p=0.5"]}),  # photos: flips
}


DYNAMICS = ["callbacks.pseudo_label_dynamics.epochs=[0,2,-1]", "callbacks.pseudo_label_dynamics.points=500",
            "callbacks.pseudo_label_dynamics.background_points=1500", "callbacks.pseudo_label_dynamics.labeled_points=100"]


def jobs_for(rows: list[tuple[str, int]], seeds: list[int], arms=tuple(ARMS), dynamics: bool = False) -> dict[str, list[str]]:
    """name -> overrides; `dynamics` draws the t-SNE maps (epochs 0, 2, last) of the semi-supervised arms
    (its evaluation loaders may draw from the global random stream, so such a run need not be bit-identical
    to one without)."""
    jobs = {}
    for seed in seeds:
        for row, labels in rows:
            base, extra = ROWS[row]
            for arm, overrides in ARMS.items():
                if arm not in arms:
                    continue
                jobs[f"{row}_n{labels}_{arm}_s{seed}"] = [*overrides, *base, *extra.get(arm, []), f"data.num_labels={labels}",
                                                          f"data.label_seed={seed}", f"seed={seed}",
                                                          "callbacks.model_checkpoint=null",
                                                          *(DYNAMICS if dynamics and arm != "supervised_only" else [])]
    return jobs


def steps_of(row: str) -> int:
    return int(next(o for o in ROWS[row][0] if o.startswith("++trainer.max_steps=")).split("=")[1])


def table(rows, seeds, out: Path) -> list[str]:
    lines = ["| data | labels | steps | seeds | " + " | ".join(f"{arm} test/acc %" for arm in ARMS) +
             " | FixMatch mask rate (last epoch) | wall s per run (sup / PL / MT / FM) |",
             "|---|---|---|---|" + "---|" * len(ARMS) + "---|---|"]
    for row, labels in rows:
        done = [s for s in seeds if all(results_of(out / f"{row}_n{labels}_{arm}_s{s}") for arm in ARMS)]
        if not done:
            continue
        res = {arm: [results_of(out / f"{row}_n{labels}_{arm}_s{s}") for s in done] for arm in ARMS}
        cells = [mean_sd([r["metrics"]["test/acc"] for r in res[arm]], 100, 2, each=len(done) > 1) for arm in ARMS]
        mask = mean_sd([r["metrics"].get("train/accepted", float("nan")) for r in res["fixmatch"]], 1, 2)
        wall = " / ".join(f"{statistics.mean(r['wall_time_s'] for r in res[arm]):.0f}" for arm in ARMS)
        lines.append(f"| {row} | {labels} | {steps_of(row)} | {','.join(map(str, done))} | " + " | ".join(cells) + f" | {mask} | {wall} |")
    return lines


def pixel_knn(seeds: list[int]) -> list[str]:
    """1-NN accuracy of the unlabeled images from the 100 labeled ones in pixel space: how far the cluster
    assumption, on which Pseudo-Label's gain rests, holds in the input space of each row."""
    import torch

    from datamodules.semisup import SemiSupervisedDataModule

    def stack(dataset):
        xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
        return torch.stack(xs).flatten(1), torch.as_tensor(ys)

    sets = {"mnist": ({"name": "npz", "path": str(ROOT.parent / "shared" / "data" / "mnist_test.npz")},
                      {"val_fraction": 0, "test_fraction": 0.2, "split_seed": 0}),
            "digits_m": ({"name": "digits_m"}, {}), "digits": ({"name": "digits"}, {})}
    lines = ["| data | 1-NN accuracy in pixel space, 100 labels, seeds " + ", ".join(map(str, seeds)) + " (%) |", "|---|---|"]
    for name, (spec, split) in sets.items():
        accs = []
        for seed in seeds:
            dm = SemiSupervisedDataModule(spec, num_labels=100, label_seed=seed, batch_size=32, **split)
            dm.setup("fit")
            (xl, yl), (xu, yu) = stack(dm.labeled), stack(dm.unlabeled)
            accs.append((yl[torch.cdist(xu, xl).argmin(1)] == yu).float().mean().item())
        lines.append(f"| {name} | {mean_sd(accs, 100, 1, each=True)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, nargs="*", default=[10, 100, 1000], help="MNIST rows")
    parser.add_argument("--missing7", type=int, nargs="*", default=[], help="MNIST rows without labeled 7s")
    parser.add_argument("--digits-m", type=int, nargs="*", default=[100], help="digits_m rows")
    parser.add_argument("--office31", type=int, nargs="*", default=[93], help="Office-31 webcam rows (31 classes)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--dynamics", action="store_true", help="t-SNE maps and curves in each semi-supervised run dir")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_semisup")
    parser.add_argument("--table-only", action="store_true", help="write the table from the finished runs")
    parser.add_argument("--pixel-knn", action="store_true", help="only the pixel-space 1-NN check of each row's data")
    args = parser.parse_args()
    if args.pixel_knn:
        print("\n".join(pixel_knn(args.seeds)))
        return
    rows = ([("mnist", n) for n in args.labels] + [("mnist_miss7", n) for n in args.missing7]
            + [("digits_m", n) for n in args.digits_m] + [("office31_webcam", n) for n in args.office31])
    if not args.table_only:
        from concurrent.futures import ThreadPoolExecutor

        jobs = jobs_for(rows, args.seeds, args.arms, args.dynamics)
        with ThreadPoolExecutor(args.parallel) as pool:  # in order: seed 0's rows first
            for future in [pool.submit(run_job, overrides, args.out / name) for name, overrides in jobs.items()]:
                try:
                    future.result()
                except RuntimeError as err:
                    print(err, file=sys.stderr)
    load = os.getloadavg()
    lines = [f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on a 2-core CPU, no GPU, shared with other jobs "
             f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), 1 thread per run, "
             f"{args.parallel} runs at a time. Seeds: those whose four runs all finished.", "", *table(rows, args.seeds, args.out)]
    path = ROOT / "benchmarks" / "results" / "semisup.md"
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
