"""Self-supervised benchmark: SimCLR, MoCo v2 and rotation prediction against a random-init encoder.

    python benchmarks/self_supervised.py                       # everything (MNIST 3 seeds, digits_m 1 seed)
    python benchmarks/self_supervised.py --datasets mnist --seeds 0 --methods simclr --jobs 2
    python benchmarks/self_supervised.py --datasets digits_m_preset mnist_m --table-datasets digits_m_preset mnist_m \
        --report benchmarks/results/ssl_textured.md       # textured colour digits, tuned presets

MNIST = ../shared/data/mnist_test.npz split 8,000 unlabeled train / 2,000 test (the
`<method>_mnist` presets); digits_m = the embedded colour digits (1,257 train / 360 test);
digits_m_preset / mnist_m = the `<method>_digits_m` / `<method>_mnist_m` presets (the same embedded
colour digits, longer; the MNIST file blended with photo patches the way digits_m is made).
The random-init row runs the same module with `model.train_encoder=false`: the encoder stays at
its initialisation and only the online probe (and BatchNorm statistics) adapt, so both metrics
are measured exactly as for the trained encoders. Each run lands in
outputs/benchmarks/ssl/<dataset>/<method>/seed<k>; finished runs are reused. Every run uses one
thread (OMP_NUM_THREADS=1). Writes benchmarks/results/ssl.md.
"""
from __future__ import annotations

import os
import sys

# This file is named like the standard library's `ssl`; keep its folder off the import path so that
# `import ssl` (asyncio, urllib, torch) finds the real module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "benchmarks" / "ssl"
METHODS = ("simclr", "moco", "rotation")
RANDOM = "random_init"

# dataset -> (overrides shared by all methods, per-method overrides)
DATASETS = {
    "mnist": (lambda m: ["experiment=ssl_mnist", f"model={m}"], {}),
    "digits_m": (
        lambda m: [f"model={m}", "data=digits_m", "data.batch_size=128", "trainer.max_epochs=15",
                   "+model.backbone.widths=[16,32,64]"],
        {},
    ),
    # textured colour digits with the tuned presets (benchmarks/results/ssl_textured.md):
    # `<method>_digits_m` and `<method>_mnist_m` (the MNIST file blended with photo patches)
    "digits_m_preset": (lambda m: ["experiment=ssl_digits_m", f"model={m}"], {}),
    "mnist_m": (lambda m: ["experiment=ssl_mnist_m", f"model={m}"], {}),
}


def run_dir(dataset: str, method: str, seed: int) -> Path:
    return OUT / dataset / method / f"seed{seed}"


def command(dataset: str, method: str, seed: int) -> list[str]:
    base, _ = DATASETS[dataset]
    model = "simclr" if method == RANDOM else method
    args = base(model) + [f"seed={seed}", "callbacks.progress_bar=null", "logger=csv",
                          f"model.evaluation.tsne={'true' if seed == 0 else 'false'}",
                          f"hydra.run.dir={run_dir(dataset, method, seed)}"]
    if method == RANDOM:
        args.append("model.train_encoder=false")
    return [sys.executable, str(ROOT / "run.py"), *args]


def read(dataset: str, method: str, seed: int) -> dict | None:
    path = run_dir(dataset, method, seed) / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return res if res.get("status") == "completed" else None


def run_one(job) -> tuple:
    dataset, method, seed = job
    if read(*job) is None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        cmd = command(*job)
        print("running:", " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"FAILED {job}:\n{proc.stderr[-2000:]}", flush=True)
    return job, read(*job)


def summarise(results: dict, datasets=tuple(DATASETS)) -> str:
    lines = ["| dataset | method | epochs | seeds | wall time / run (s) | test/knn_acc | test/linear_acc |",
             "|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for method in (*METHODS, RANDOM):
            runs = [r for (d, m, _), r in results.items() if d == dataset and m == method and r]
            if not runs:
                continue
            knn = [r["metrics"]["test/knn_acc"] * 100 for r in runs]
            lin = [r["metrics"]["test/linear_acc"] * 100 for r in runs]
            wall = statistics.mean(r["wall_time_s"] for r in runs)
            epochs = runs[0]["config"]["trainer"]["max_epochs"]

            def fmt(v):
                return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")

            name = "random-init encoder" if method == RANDOM else method
            lines.append(f"| {dataset} | {name} | {epochs if method != RANDOM else 0} | {len(runs)} | {wall:.0f} | "
                         f"{fmt(knn)} | {fmt(lin)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits_m"], choices=list(DATASETS),
                        help="default: mnist digits_m (the presets' rows run only when named)")
    parser.add_argument("--methods", nargs="+", default=[*METHODS, RANDOM], choices=[*METHODS, RANDOM])
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="default: 0 on digits_m, 0 1 2 on the others")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "results" / "ssl.md"))
    parser.add_argument("--table-datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="datasets whose finished runs the report's table lists (default: all)")
    args = parser.parse_args()

    jobs = [(d, m, s) for d in args.datasets for s in (args.seeds or ([0] if d == "digits_m" else [0, 1, 2]))
            for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(run_one, jobs))
    # the report covers every finished run on disk, not only this invocation's
    for d in DATASETS:
        for m in (*METHODS, RANDOM):
            for s in range(3):
                results.setdefault((d, m, s), read(d, m, s))
    table = summarise(results, args.table_datasets)
    print(table)
    report = Path(args.report)
    header = report.read_text().split("<!-- table -->")[0] if report.is_file() else "# Self-supervised learning\n\n"
    report.write_text(f"{header}<!-- table -->\n{table}\n\nGenerated {datetime.date.today()} by "
                      f"`python benchmarks/self_supervised.py`; machine: 2-core CPU, no GPU (shared with other jobs).\n")


if __name__ == "__main__":
    main()
