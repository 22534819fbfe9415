"""Domain adaptation on Office-31 with the ImageNet EfficientNet-Lite0 backbone, beside Transfer-Learning-Library.

Every run: `python run.py model=<method> data=office31_<task> model.backbone.name=tf_efficientnet_lite0
model.backbone.pretrained=true ...` with the method's defaults (the pretrained backbone trains at 0.1 x the
learning rate, `model.backbone_lr_mult`), a CPU-sized budget (`--epochs` x `--steps-per-epoch` batches of
`--batch-size` source and target photos) at `--image-size` px, the weights chosen without target labels
(`model.select=best` by the `im` validator, the family default). The table sets each cell beside the
ResNet-50 numbers of Transfer-Learning-Library's benchmark (224 px, 20 epochs x 1,000 iterations;
docs/dalib/benchmarks/image_classification.rst, "Office-31 accuracy on ResNet-50").

    python benchmarks/office31_da.py                                          # A->W and W->A, 3 seeds
    python benchmarks/office31_da.py --tasks a_to_w --methods source_only dann --seeds 0
    python benchmarks/office31_da.py --frozen-trunk --image-size 224 --steps-per-epoch 100 \
        --methods source_only dann dan coral adda cdan mcc     # 224 px on a CPU: the trunk's features once

Every run has its own dir under --runs-dir; finished runs are reused, so an interrupted invocation continues.
"""
from __future__ import annotations

import sys
from pathlib import Path

# the repository root instead of this folder, whose scripts would shadow stdlib modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks.run_many import ROOT, mean_sd, run_jobs, write_report  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "office31"
TASKS = {"a_to_w": "A->W", "w_to_a": "W->A", "a_to_d": "A->D", "d_to_a": "D->A", "w_to_d": "W->D", "d_to_w": "D->W"}
METHODS = ("source_only", "dann", "dan", "coral", "adda", "drcn", "cdan", "cdan_e", "mcc", "wdan", "pada", "osbp", "mme")
# The label-space settings of the domain-adaptation issues: overrides, the headline metric, what it measures.
# partial: the target keeps the 10 classes Office-31 shares with Caltech-256, the protocol of PADA (Cao et al.,
# ECCV 2018); open_set: the source's first 10 classes (sorted) are known, every other target photo is "unknown"
# (a simplification of Busto & Gall 2017 / Saito et al. 2018, which keep classes 21-31 as the unknown ones);
# semi: 3 labeled target photos per class (MME's 3-shot setting, Saito et al. 2019).
CALTECH_SHARED = ["back_pack", "bike", "calculator", "headphones", "keyboard", "laptop_computer", "monitor", "mouse",
                  "mug", "projector"]
SETTINGS = {
    "closed": ([], "test/target_acc", "target test accuracy"),
    "partial": ([f"data.target_classes=[{','.join(CALTECH_SHARED)}]"], "test/target_acc",
                "target test accuracy (target: the 10 Caltech-shared classes; source: all 31)"),
    "open_set": (["data.known_classes=10"], "test/h_score",
                 "H-score of the known-class accuracy (OS*) and the unknown recall"),
    "semi": (["data.target_labels_per_class=3"], "test/target_acc", "target test accuracy, 3 labeled target photos per class"),
}
# Transfer-Learning-Library, ResNet-50 at 224 px (docs/dalib/benchmarks/image_classification.rst); CORAL and DRCN
# are not in that table.
TLLIB = {
    "source_only": {"a_to_w": 75.8, "w_to_a": 63.8}, "dann": {"a_to_w": 91.4, "w_to_a": 70.4},
    "adda": {"a_to_w": 91.2, "w_to_a": 71.2}, "dan": {"a_to_w": 84.2, "w_to_a": 65.2},
    "cdan": {"a_to_w": 93.8, "w_to_a": 70.4}, "mcc": {"a_to_w": 94.1, "w_to_a": 74.2},
}


# The ImageNet trunk frozen, a new 256-d bottleneck (TLlib's width) adapted on the trunk's features, which are
# then computed once per run: 224 px photos at the cost of a few hundred small matrix products per step.
FROZEN_TRUNK = ["model.bottleneck_dim=256", "model.trainable_stages=1"]


def published(method: str, task: str) -> str:
    """TLlib's accuracy for the cell, with its gain over TLlib's source-only; empty where it has none."""
    theirs = TLLIB.get(method, {}).get(task)
    if theirs is None:
        return ""
    return f"{theirs:.1f}" if method == "source_only" else f"{theirs:.1f} ({theirs - TLLIB['source_only'][task]:+.1f})"


def job(method: str, task: str, seed: int, args) -> list[str]:
    return [
        f"model={method}", f"data=office31_{task}", f"data.source.root={args.data}",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        f"data.steps_per_epoch={args.steps_per_epoch}", f"data.num_workers={args.workers}",
        "model.backbone.name=tf_efficientnet_lite0", "model.backbone.pretrained=true", "model.tsne=false",
        f"trainer.max_epochs={args.epochs}", "callbacks.model_checkpoint=null", f"seed={seed}",
        *(FROZEN_TRUNK if args.frozen_trunk else []), *SETTINGS[args.setting][0], *args.override,
    ]


def variant(args) -> str:
    """Run dirs and the report name: the image size, and the protocol when it is not the default one."""
    return (f"{args.image_size}px" + ("_frozen_trunk" if args.frozen_trunk else "")
            + ("" if args.setting == "closed" else f"_{args.setting}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["a_to_w", "w_to_a"], choices=sorted(TASKS))
    parser.add_argument("--methods", nargs="+", default=["source_only", "dann", "dan", "coral", "adda", "drcn"],
                        choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="source and target photos per step, each")
    parser.add_argument("--setting", default="closed", choices=sorted(SETTINGS),
                        help="label-space setting: closed, partial, open_set (headline: H-score), semi (3 target labels per class)")
    parser.add_argument("--frozen-trunk", action="store_true",
                        help="freeze the trunk and adapt a 256-d bottleneck on its cached features (" + " ".join(FROZEN_TRUNK)
                        + "); DRCN trains on the images themselves and is not cached")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--parallel", type=int, default=2, help="run.py processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per run")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "office31_da")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/office31_da_<size>px.md")
    args = parser.parse_args()
    for domain in {TASKS[t][0] for t in args.tasks} | {TASKS[t][-1] for t in args.tasks}:
        name = {"A": "amazon", "W": "webcam", "D": "dslr"}[domain]
        if not (args.data / name).is_dir():
            sys.exit(f"{args.data / name} is missing: these tasks need Office-31's {name} photos under --data")
    started = time.time()
    keys = [(m, t, s) for t in args.tasks for m in args.methods for s in args.seeds]
    name = lambda m, t, s: f"{variant(args)}/{t}/{m}/seed{s}"  # noqa: E731
    results = run_jobs({name(*key): job(*key, args) for key in keys}, args.runs_dir, args.parallel, args.threads)
    write_table(args, {key: results[name(*key)] for key in keys}, time.time() - started)


def write_table(args, results: dict, wall: float) -> None:
    out = args.out or ROOT / "benchmarks" / "results" / f"office31_da_{variant(args)}.md"
    walls = [r["wall_time_s"] for r in results.values()]
    m = next(iter(results.values()))["machine"]
    overrides, metric, meaning = SETTINGS[args.setting]
    acc = {key: 100 * r["metrics"][metric] for key, r in results.items()}
    lines = [
        f"# Office-31 domain adaptation ({args.setting}), ImageNet EfficientNet-Lite0, {args.image_size} px",
        "",
        f"Command: `python benchmarks/office31_da.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {m.get('cpus')} CPU cores, GPU {m.get('gpu')}, {platform.processor() or platform.machine()}; "
        f"{args.threads} thread(s) per run, {args.parallel} runs at a time  ",
        f"Date: {datetime.date.today().isoformat()}; wall time of this invocation {wall / 60:.1f} min; per run "
        f"{min(walls) / 60:.1f}-{max(walls) / 60:.1f} min (finished runs are reused)  ",
        f"Budget: {args.epochs} epochs x {args.steps_per_epoch} steps of {args.batch_size} source + {args.batch_size} "
        f"target photos; each method's defaults ("
        + ("trunk frozen, a 256-d fc-BN-ReLU bottleneck adapted on its features computed once: `" + " ".join(FROZEN_TRUNK) + "`"
           if args.frozen_trunk else "backbone at 0.1 x lr") + "), weights selected by the `im` validator "
        f"(no target label). Seeds {', '.join(map(str, args.seeds))}; {meaning} (`{metric}`) in %, mean ± sd"
        + (f"; setting overrides `{' '.join(overrides)}`." if overrides else "."),
        "",
        "| method | " + " | ".join(f"{TASKS[t]} (ours)" for t in args.tasks) + " | "
        + " | ".join(f"{TASKS[t]} gain over source-only" for t in args.tasks) + " | "
        + " | ".join(f"{TASKS[t]} TLlib ResNet-50 (gain)" for t in args.tasks) + " |",
        "|---|" + "---|" * (3 * len(args.tasks)),
    ]
    for method in args.methods:
        ours = [mean_sd([acc[(method, t, s)] for s in args.seeds], digits=1, each=True) for t in args.tasks]
        gains = []
        for t in args.tasks:
            if "source_only" in args.methods and method != "source_only":
                gain = statistics.mean(acc[(method, t, s)] - acc[("source_only", t, s)] for s in args.seeds)
                gains.append(f"{gain:+.1f}")
            else:
                gains.append("")
        tllib = [published(method, t) if args.setting == "closed" else "" for t in args.tasks]
        lines.append(f"| {method} | " + " | ".join(ours + gains + tllib) + " |")
    write_report(out, lines, args.runs_dir, f"{variant(args)}/<task>/<method>/seed<k>/results.json")


if __name__ == "__main__":
    main()
