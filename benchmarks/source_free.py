"""Source-free domain adaptation benchmark: MNIST -> USPS (ADDA's pair of datasets, from ../shared/data).

    python benchmarks/source_free.py --seeds 0 1 2
    python benchmarks/source_free.py --report

Per seed: a source model (`model=supervised`, LeNet, the MNIST file's 8,000 training images) writes its
encoder.pt; each method then adapts it on the USPS training images alone (no label, no MNIST image) and is
tested on the USPS test split, resized to LeNet's 28 x 28. "source model" = the same encoder tested on
USPS without adaptation (`train=false`). Table: benchmarks/results/source_free.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run_many import append_table, mean_sd, results_of, run_job  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "outputs" / "benchmarks" / "source_free"
SOURCE = ["model=supervised", "data=npz", f"data.dataset.path={SHARED}/mnist_test.npz", "data.val_fraction=0.1"]
TARGET = ["data=npz", f"data.dataset.train_path={SHARED}/usps_train.npz", f"data.dataset.test_path={SHARED}/usps_test.npz",
          "data.image_size=28"]
METHODS = {"source model": ["model=shot", "train=false"], "self_training": ["model=self_training"],
           "shot": ["model=shot"], "aad": ["model=aad"]}
PUBLISHED = "SHOT's digits M->U: 97.9 (its own protocol: full MNIST, LeNet with BN, 30 epochs); ADDA's paper number 89.4"


def run_seed(seed: int, epochs: int) -> dict[str, float]:
    source_dir = OUT / f"source_s{seed}"
    run_job([*SOURCE, f"seed={seed}", "trainer.max_epochs=10"], source_dir)
    out = {}
    for name, overrides in METHODS.items():
        run_dir = OUT / f"{name.replace(' ', '_')}_s{seed}"
        res = run_job([*overrides, *TARGET, f"model.source_model={source_dir / 'encoder.pt'}", f"seed={seed}",
                       f"trainer.max_epochs={epochs}"], run_dir)
        out[name] = res["metrics"]["test/acc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--report", action="store_true", help="only tabulate the finished runs")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {name: [] for name in METHODS}
    for seed in args.seeds:
        if args.report:
            for name in METHODS:
                res = results_of(OUT / f"{name.replace(' ', '_')}_s{seed}")
                if res:
                    rows[name].append(res["metrics"]["test/acc"])
            continue
        for name, acc in run_seed(seed, args.epochs).items():
            rows[name].append(acc)
    lines = [f"## Source-free MNIST -> USPS ({platform.machine()} CPU; seeds {args.seeds}; {args.epochs} epochs of "
             f"the USPS training images, batch 128; source LeNet 10 epochs on the MNIST file)", "",
             "`python benchmarks/source_free.py --seeds " + " ".join(map(str, args.seeds)) + "`", "",
             "| method | USPS test accuracy (%) | runs |", "|---|---|---|"]
    lines += [f"| {name} | {mean_sd(v, 100, 1, each=True)} | {len(v)} |" for name, v in rows.items() if v]
    lines += ["", f"Published: {PUBLISHED}."]
    append_table(ROOT / "benchmarks" / "results" / "source_free.md", lines)


if __name__ == "__main__":
    main()
