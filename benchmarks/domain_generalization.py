"""Domain generalization on Rotated MNIST (the shared MNIST file in 6 rotated parts, data=rotated_mnist):
leave-one-domain-out, every method, accuracy on the held-out domain; and multi-source DA (the held-out
domain's images unlabeled during training) beside the mixed-source baseline.

    python benchmarks/domain_generalization.py --held-out r0 r15 r30 r45 r60 r75 --seeds 0 1 2
    python benchmarks/domain_generalization.py --data digit_domains --held-out mnist usps digits digits_m
    python benchmarks/domain_generalization.py --report

Model selection: DomainBed's training-domain validation would pick the checkpoint; these runs report the
last epoch (the budget is short). Table: benchmarks/results/domain_generalization.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run_many import append_table, mean_sd, results_of, run_job  # noqa: E402

OUT = ROOT / "outputs" / "benchmarks" / "domain_generalization"
DG = ["erm", "dg_coral", "dg_mmd", "group_dro", "irm"]
MULTI_SOURCE = {"erm + unlabeled target (mixed source)": ["model=erm", "data.unlabeled_target=true"],
                "m3sda": ["model=m3sda"]}
PUBLISHED = ("DomainBed (Gulrajani & Lopez-Paz 2021), Rotated MNIST on all 70,000 MNIST images, training-domain "
             "validation: ERM 98.0 average (0 deg 95.9, 75 deg 96.0), CORAL 98.0, MMD 97.9, GroupDRO 98.0, IRM 97.7")


def rows_for(data: str, held_out: str) -> dict[str, list[str]]:
    jobs = {m: [f"model={m}"] for m in DG}
    jobs.update(MULTI_SOURCE)
    return {name: [*overrides, f"data={data}", f"data.test_domain={held_out}"] for name, overrides in jobs.items()}


def run_dir(data: str, name: str, held_out: str, seed: int) -> Path:
    return OUT / data / f"{name.split()[0]}{'_ms' if '+' in name else ''}_{held_out}_s{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="rotated_mnist", help="rotated_mnist | digit_domains | a multi-domain config")
    parser.add_argument("--held-out", nargs="+", default=["r0", "r75"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--report", action="store_true", help="only tabulate the finished runs")
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = {}
    for held_out in args.held_out:
        for seed in args.seeds:
            for name, overrides in rows_for(args.data, held_out).items():
                where = run_dir(args.data, name, held_out, seed)
                res = results_of(where) if args.report else run_job(
                    [*overrides, f"seed={seed}", f"trainer.max_epochs={args.epochs}"], where)
                if res:
                    table.setdefault(name, {}).setdefault(held_out, []).append(res["metrics"]["test/acc"])
    header = "| method | " + " | ".join(f"held out {h}" for h in args.held_out) + " | average |"
    lines = [f"## data={args.data}, leave one domain out ({platform.machine()} CPU; seeds {args.seeds}; "
             f"{args.epochs} epochs, LeNet, Adam 1e-3, batch 128 per domain, last epoch)", "",
             f"`python benchmarks/domain_generalization.py --data {args.data} --held-out {' '.join(args.held_out)} --seeds "
             f"{' '.join(map(str, args.seeds))}`", "", header, "|" + "---|" * (len(args.held_out) + 2)]
    for name, cells in table.items():
        means = [sum(v) / len(v) for v in cells.values()]
        lines.append(f"| {name} | " + " | ".join(mean_sd(cells[h], 100, 1) if h in cells else "-" for h in args.held_out)
                     + f" | {100 * sum(means) / len(means):.1f} |")
    lines += ["", f"Published: {PUBLISHED}."]
    append_table(ROOT / "benchmarks" / "results" / "domain_generalization.md", lines)


if __name__ == "__main__":
    main()
