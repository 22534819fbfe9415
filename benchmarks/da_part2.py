"""Domain adaptation, part 2: CDAN, CDAN+E, MCC and WDAN against DANN and DAN, with the checkpoint picked
by a validator that uses no target label, beside the upper bound that target test accuracy would pick.

    nice -n 10 python benchmarks/da_part2.py --pairs digits mnist_usps --seeds 0     # runs, then the table
    python benchmarks/da_part2.py --report                                          # table from the run dirs

Each run is `python run.py experiment=<protocol> model=<method> seed=S model.tsne=false
trainer.check_val_every_n_epoch=5` (the protocol's budget: digits -> digits_m 1,500 steps, MNIST -> USPS
1,000 steps of 64 + 64 images, Adam 1e-3), run one at a time (benchmarks/run_many.py; a finished run dir
is not run again). Every validated epoch records each validator's score and its target test accuracy
(model_selection.json), so one run gives the pick of every validator; the run itself tests the pick of
`model.validator` (the default). The table goes to benchmarks/results/da_part2.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks.domain_adaptation import mean_std  # noqa: E402
from benchmarks.run_many import results_of, run_job  # noqa: E402
from lightning_modules.evaluation.validators import VALIDATORS  # noqa: E402

METHODS = ["source_only", "dann", "cdan", "cdan_e", "mcc", "dan", "wdan"]
PROTOCOL = {"digits": "digits_digits_m", "mnist_usps": "mnist_usps", "usps_mnist": "usps_mnist"}
OUT = ROOT / "outputs" / "benchmarks" / "da_part2"
MD = ROOT / "benchmarks" / "results" / "da_part2.md"


def overrides(method: str, pair: str, seed: int, extra: list[str]) -> list[str]:
    return [f"experiment={PROTOCOL[pair]}", f"model={method}", f"seed={seed}", "model.tsne=false",
            "trainer.check_val_every_n_epoch=5", "++trainer.enable_model_summary=false", *extra]


def cell(values: list[float]) -> str:
    return mean_std(values).replace(" (1 seed)", "")  # the seeds column says how many


def picks(results: dict) -> dict[str, float]:
    """Target test accuracy (%) of: the tested weights, the last validated epoch, each validator's pick, the upper bound."""
    history = results["model_selection"]["history"]
    out = {"tested": 100 * results["metrics"]["test/target_acc"], "last": 100 * history[-1]["target_test_acc"],
           "upper_bound": 100 * max(r["target_test_acc"] for r in history)}
    for name in VALIDATORS:
        scored = [r for r in history if r[name] == r[name]]  # NaN scores never pick
        out[name] = 100 * max(scored, key=lambda r: r[name])["target_test_acc"] if scored else float("nan")
    return out


def report(pairs: list[str], seeds: list[int], validator: str) -> list[str]:
    cols = ["last", *VALIDATORS, "upper_bound"]
    lines = []
    for pair in pairs:
        head = ("| method | seeds | " + " | ".join(f"**{c}** (default)" if c == validator else c for c in cols)
                + " | s/run |")
        rows, gaps = [head, "|" + "---|" * (len(cols) + 3)], {c: [] for c in VALIDATORS}
        for method in METHODS:
            done = [r for s in seeds if (r := results_of(OUT / f"{method}_{pair}_s{s}")) is not None]
            if not done:
                continue
            p = [picks(r) for r in done]
            for c in VALIDATORS:
                gaps[c] += [x["upper_bound"] - x[c] for x in p]
            rows.append(f"| {method} | {len(done)} | " + " | ".join(cell([x[c] for x in p]) for c in cols)
                        + f" | {statistics.mean(r['wall_time_s'] for r in done):.0f} |")
        if len(rows) == 2:
            continue
        lines += [f"### {pair}", "", *rows, "",
                  "Mean gap to the upper bound (points, all runs above): "
                  + ", ".join(f"{c} {statistics.mean(g):.1f}" for c, g in gaps.items() if g), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["digits"], choices=list(PROTOCOL))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--report", action="store_true", help="only write the table from the finished run dirs")
    args = parser.parse_args()
    if not args.report:
        for seed in args.seeds:
            for pair in args.pairs:
                for method in args.methods:
                    run_job(overrides(method, pair, seed, args.override), OUT / f"{method}_{pair}_s{seed}")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        validator = compose("config", overrides=["model=dann"]).model.validator
    load = os.getloadavg()
    lines = [f"## Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "", f"Command: `python benchmarks/da_part2.py {shlex.join(sys.argv[1:])}`; machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, shared (load average {load[0]:.1f} at the end), one thread per run.", "",
             "Target test accuracy (%) of the checkpoint each rule picks among the epochs validated every 5 epochs: "
             "`last` (the end of training), each validator (no target label), and `upper_bound` (the pick of "
             "target *test* accuracy: uses target labels, not a result). Mean ± sd over seeds.", "",
             *report(list(PROTOCOL), sorted(set(args.seeds) | {0, 1, 2}), validator)]
    MD.parent.mkdir(parents=True, exist_ok=True)
    MD.write_text("# Domain adaptation, part 2 (CDAN, CDAN+E, MCC, WDAN; model selection)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
