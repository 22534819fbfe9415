"""Transfer strategies on real photos: Office-31 (../shared/data/office31), ImageNet EfficientNet-Lite0.

Rows: scratch (the same network at random initialisation, everything trained at the head's learning
rate), linear (frozen ImageNet features, head on cached features), partial (the last
`--trainable-stages` stages + head, backbone at 0.1 x lr), full (everything, backbone at 0.1 x lr).
Columns: labels per class (class-balanced subset of the train split, `data.num_labels`
= k x 31; a class with fewer training photos gives all it has) and all labels. Split: stratified,
`split_seed` 0 (70% train / 10% val / 20% test of the domain). Every cell: test accuracy (%), mean
± sd over seeds (the seed draws the labeled subset and the initialisation).

Every run is `python run.py ...` in its own run dir under --runs-dir; finished runs are reused.

    python benchmarks/office31_strategies.py                                    # everything, 224 px
    python benchmarks/office31_strategies.py --strategies linear --image-size 112   # the cheap rows
"""
from __future__ import annotations

import sys
from pathlib import Path

# the repository root instead of this folder, whose scripts would shadow stdlib modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

from benchmarks.run_many import ROOT, mean_sd, run_jobs, write_report  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "office31"
STRATEGIES = ("scratch", "linear", "partial", "full")
TRAIN_SIZE = {"webcam": 556, "amazon": 1972}  # 70% of the domain with split_seed 0 (795 and 2,817 photos)
NUM_CLASSES = 31


def strategy_overrides(strategy: str, trainable_stages: int) -> list[str]:
    if strategy == "scratch":
        return ["model.strategy=full", "model.backbone_lr_mult=1.0", "model.backbone.pretrained=false"]
    extra = [f"model.trainable_stages={trainable_stages}"] if strategy == "partial" else []
    return [f"model.strategy={strategy}", "model.backbone.pretrained=true", *extra]


def schedule(num_labels: int, steps: int) -> tuple[int, int]:
    """(batch size, epochs) giving about `steps` optimizer steps on `num_labels` examples."""
    batch = max(1, min(32, num_labels // 2))
    return batch, max(1, math.ceil(steps / (num_labels // batch)))


def job(domain: str, strategy: str, labels: str, seed: int, args) -> list[str]:
    n = TRAIN_SIZE[domain] if labels == "all" else int(labels) * NUM_CLASSES
    steps = args.linear_steps if strategy == "linear" else args.steps
    batch, epochs = schedule(n, steps)
    lr = args.linear_lr if strategy == "linear" else args.lr
    return [
        "model=finetune", "data=office31", f"data.dataset.root={args.data}", f"data.dataset.domain={domain}",
        f"data.image_size={args.image_size}", f"data.batch_size={batch}", f"data.num_workers={args.workers}",
        f"data.num_labels={'null' if labels == 'all' else n}", f"data.label_seed={seed}",
        "model.backbone.name=tf_efficientnet_lite0", *strategy_overrides(strategy, args.trainable_stages),
        f"model.optimizer.lr={lr}", f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={epochs}",
        "callbacks.model_checkpoint=null", f"seed={seed}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=["webcam"], choices=sorted(TRAIN_SIZE))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--labels", nargs="+", default=["1", "3", "10", "all"], help="labels per class, or all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of scratch/partial/full runs")
    parser.add_argument("--linear-steps", type=int, default=300, help="optimizer steps of linear runs (cached features)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--linear-lr", type=float, default=1e-2)
    parser.add_argument("--trainable-stages", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="run.py processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per run (JPEG decoding)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "office31_strategies")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/office31_strategies_<size>px.md")
    args = parser.parse_args()
    for domain in args.domains:
        if not (args.data / domain).is_dir():
            sys.exit(f"{args.data / domain} is missing: this benchmark needs Office-31 in ../shared/data/office31")
    started = time.time()

    keys = [(d, s, b, seed) for d in args.domains for s in args.strategies for b in args.labels for seed in args.seeds]
    name = lambda d, s, b, seed: f"{args.image_size}px/{d}/{s}/{b}/seed{seed}"  # noqa: E731
    results = run_jobs({name(*key): job(*key, args) for key in keys}, args.runs_dir, args.parallel, args.threads)
    write_table(args, {key: results[name(*key)] for key in keys}, time.time() - started)


def write_table(args, results: dict, wall: float) -> None:
    out = args.out or ROOT / "benchmarks" / "results" / f"office31_strategies_{args.image_size}px.md"
    walls = [r["wall_time_s"] for r in results.values()]
    m = next(iter(results.values()))["machine"]
    machine = f"{m.get('cpus')} CPU cores, GPU {m.get('gpu')}, {m.get('platform')}"
    lines = [
        f"# Office-31: transfer strategies with ImageNet EfficientNet-Lite0, {args.image_size} px",
        "",
        f"Command: `python benchmarks/office31_strategies.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine} ({platform.processor() or platform.machine()}; {args.threads} thread(s) per run, "
        f"{args.parallel} runs at a time, shared with other jobs)  ",
        f"Date: {datetime.date.today().isoformat()}; wall time of this invocation {wall / 60:.1f} min; per run "
        f"{min(walls):.0f}-{max(walls):.0f} s (finished runs are reused)  ",
        f"Seeds: {', '.join(map(str, args.seeds))}; test accuracy in %, mean ± sd over seeds (single values in brackets)",
        "",
        f"Split: stratified, split_seed 0, 70/10/20. Labels: k per class of the train split (class-balanced, "
        f"label_seed = seed). Steps: about {args.linear_steps} (linear, Adam lr {args.linear_lr}, head on cached "
        f"features) / {args.steps} (scratch, partial, full; Adam lr {args.lr}, backbone x0.1 for partial/full, "
        f"partial = last {args.trainable_stages} stages), batch min(32, n/2), cosine schedule.",
    ]
    for domain in args.domains:
        lines += ["", f"## {domain}", "", "| strategy | " + " | ".join(
            f"{b} labels" if b == "all" else f"{b}/class" for b in args.labels) + " |",
            "|---|" + "---|" * len(args.labels)]
        for s in args.strategies:
            cells = [mean_sd([results[(domain, s, b, seed)]["metrics"]["test/acc"] for seed in args.seeds],
                             scale=100, digits=1, each=True) for b in args.labels]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    write_report(out, lines, args.runs_dir, f"{args.image_size}px/<domain>/<strategy>/<labels>/seed<k>/results.json")


if __name__ == "__main__":
    main()
