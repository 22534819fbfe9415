"""Self-supervised settings sweep on the textured colour digits (issue 4), several seeds per setting.

Each named setting is a list of overrides on a preset; every (setting, seed) is one `python run.py`
run in outputs/benchmarks/ssl_sweep/<sweep>/<setting>/seed<k> (finished runs are reused). The table
gives, per setting, the last validation kNN accuracy (the column settings are chosen on; digits_m has a
180-image validation split) and the test metrics, mean ± sd over the seeds.

    python benchmarks/ssl_sweep.py --sweep digits_m --jobs 2                    # CPU, 2 at a time
    python benchmarks/ssl_sweep.py --sweep mnist_m digits_m --device gpu --jobs 14 \
        --report benchmarks/results/ssl_sweep.md                                  # one GPU, 14 processes
    python benchmarks/ssl_sweep.py --sweep mnist_m digits_m --table-only       # the table of finished runs
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_many import mean_sd, results_of, run_jobs  # noqa: E402

OUT = ROOT / "outputs" / "benchmarks" / "ssl_sweep"
NO_TSNE = ["model.evaluation.tsne=false"]
INVERT = ["data.augment.invert_p=0.5"]
NO_INVERT = ["data.augment.invert_p=0"]


def epochs(n: int) -> list[str]:
    return [f"trainer.max_epochs={n}"]


# sweep -> setting -> overrides. digits_m: 1,257 training images, ~10 steps per epoch at batch 128.
# Every setting names its epochs and inversion, so that it does not change when a preset does.
SWEEPS: dict[str, dict[str, list[str]]] = {
    "digits_m": {  # the longest runs first: jobs start in this order
        "moco_400ep_invert": ["experiment=ssl_digits_m", "model=moco", *epochs(400), *INVERT],
        "moco_400ep_invert_m0.995": ["experiment=ssl_digits_m", "model=moco", *epochs(400), *INVERT, "model.momentum=0.995"],
        "moco_200ep_invert": ["experiment=ssl_digits_m", "model=moco", *epochs(200), *INVERT],
        "moco_200ep_invert_t0.2": ["experiment=ssl_digits_m", "model=moco", *epochs(200), *INVERT, "model.temperature=0.2"],
        "moco_200ep_invert_m0.9": ["experiment=ssl_digits_m", "model=moco", *epochs(200), *INVERT, "model.momentum=0.9"],
        "simclr_200ep_invert": ["experiment=ssl_digits_m", "model=simclr", *epochs(200), *INVERT],
        "simclr_200ep": ["experiment=ssl_digits_m", "model=simclr", *epochs(200), *NO_INVERT],
        "moco_400ep": ["experiment=ssl_digits_m", "model=moco", *epochs(400), *NO_INVERT],
        "moco_100ep": ["experiment=ssl_digits_m", "model=moco", *epochs(100), *NO_INVERT],
        "moco_100ep_invert": ["experiment=ssl_digits_m", "model=moco", *epochs(100), *INVERT],
        "simclr_100ep": ["experiment=ssl_digits_m", "model=simclr", *epochs(100), *NO_INVERT],
        "simclr_100ep_invert": ["experiment=ssl_digits_m", "model=simclr", *epochs(100), *INVERT],
        "simclr_30ep_invert": ["experiment=ssl_digits_m", "model=simclr", *epochs(30), *INVERT],
        # the encoder is not trained; the probe and BatchNorm statistics run for 30 epochs
        "random_init": ["experiment=ssl_digits_m", "model=simclr", *epochs(30), *NO_INVERT, "model.train_encoder=false"],
    },
    # MNIST blended with photo patches: no validation split, so only settings fixed in advance
    # (MoCo with moco_mnist's 50 epochs, with and without inversion)
    "mnist_m": {
        "moco_50ep": ["experiment=ssl_mnist_m", "model=moco", *epochs(50), *NO_INVERT],
        "moco_50ep_invert": ["experiment=ssl_mnist_m", "model=moco", *epochs(50), *INVERT],
    },
}


def last_logged(run_dir: Path, metric: str) -> float | None:
    """The last value of `metric` in the run's CSV log (None when never logged)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    values = [row[metric] for row in csv.DictReader(path.open()) if row.get(metric)]
    return float(values[-1]) if values else None


def fmt(values: list[float]) -> str:
    if len(values) < 2:  # one seed: its value alone, no spread
        return f"{100 * values[0]:.2f}" if values else "-"
    return mean_sd(values, scale=100, digits=2)


def table(sweeps: list[str], seeds: list[int]) -> str:
    lines = ["| sweep | setting | seeds done | val/knn_acc (last) | test/knn_acc | test/linear_acc | wall s / run |",
             "|---|---|---|---|---|---|---|"]
    for sweep in sweeps:
        for setting in SWEEPS[sweep]:
            dirs = [OUT / sweep / setting / f"seed{s}" for s in seeds]
            done = [(d, r) for d in dirs if (r := results_of(d)) is not None]
            val = [v for d, _ in done if (v := last_logged(d, "val/knn_acc")) is not None]
            knn = [r["metrics"]["test/knn_acc"] for _, r in done]
            lin = [r["metrics"]["test/linear_acc"] for _, r in done]
            wall = f"{statistics.mean(r['wall_time_s'] for _, r in done):.0f}" if done else "-"
            lines.append(f"| {sweep} | {setting} | {len(done)} | {fmt(val)} | {fmt(knn)} | {fmt(lin)} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", nargs="+", default=["digits_m"], choices=list(SWEEPS))
    parser.add_argument("--settings", nargs="+", default=None, help="only these settings (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each one CPU thread)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table here (markdown)")
    parser.add_argument("--table-only", action="store_true", help="run nothing; tabulate the finished runs")
    args = parser.parse_args()

    unknown = set(args.settings or []) - {s for sw in args.sweep for s in SWEEPS[sw]}
    if unknown:
        sys.exit(f"unknown --settings {sorted(unknown)}; choices: {[s for sw in args.sweep for s in SWEEPS[sw]]}")
    trainer = ["trainer=gpu"] if args.device == "gpu" else []
    jobs = {f"{sweep}/{setting}/seed{seed}": [*overrides, *trainer, *NO_TSNE, "logger=csv", f"seed={seed}"]
            for sweep in args.sweep for setting, overrides in SWEEPS[sweep].items()
            if args.settings is None or setting in args.settings for seed in args.seeds}
    try:
        if not args.table_only:
            run_jobs(jobs, OUT, parallel=args.jobs)
    finally:  # the table of whatever finished, also when a run failed
        text = table(args.sweep, args.seeds)
        print(text, flush=True)
        if args.report:
            machine = f"{platform.machine()}, {args.device}, {args.jobs} runs at a time"
            args.report.write_text(f"Generated {datetime.date.today()} by `python benchmarks/ssl_sweep.py "
                                   f"{' '.join(sys.argv[1:])}` ({machine}).\n\n{text}\n")


if __name__ == "__main__":
    main()
