"""Domain-adaptation benchmark: every method x pair x seed, in one process, CPU-sized.

    python benchmarks/domain_adaptation.py --pairs digits --seeds 0 1 2           # embedded pair
    python benchmarks/domain_adaptation.py --pairs mnist_usps usps_mnist          # ../shared/data
    python benchmarks/domain_adaptation.py --report                              # table from the json
    python benchmarks/domain_adaptation.py --pairs mnist_usps usps_mnist --epochs 40 --steps-per-epoch 50 \
        --batch-size 64 --json benchmarks/results/domain_adaptation_long.json \
        --md benchmarks/results/domain_adaptation_long.md --out outputs/benchmarks/domain_adaptation_long
                                                    # another budget keeps its own json and table

Each run is `python run.py experiment=<pair protocol> model=<method> seed=S model.tsne=false ...` composed in
process (same code path as the CLI, without a new interpreter per run) with the training length
given here (`--epochs` x `--steps-per-epoch` batches of `--batch-size` source and target images).
Results accumulate in benchmarks/results/domain_adaptation.json (one row per run, rerunnable),
and the markdown table goes to benchmarks/results/domain_adaptation.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where a sibling would
# shadow the standard library: import from the repository root instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
os.environ.setdefault("TRANSFERLAB_ROOT", str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

METHODS = ["source_only", "dann", "adda", "drcn", "dan", "coral", "target_oracle"]
PAIRS = ["digits", "mnist_usps", "usps_mnist"]
PROTOCOL = {"digits": "digits_digits_m"}  # pair name -> its experiment preset (the others share the name)
RESULTS = ROOT / "benchmarks" / "results"
NOTES = "## Notes"
# Target accuracy (%) reported in the papers, ADDA protocol (Tzeng et al. 2017, Table 2; DANN as
# run there; DRCN from Ghifary et al. 2016, Table 3).
PAPER = {
    "mnist_usps": {"source_only": 75.2, "dann": 77.1, "adda": 89.4, "drcn": 91.80},
    "usps_mnist": {"source_only": 57.1, "dann": 73.0, "adda": 90.1, "drcn": 73.67},
}


def run_one(method: str, pair: str, seed: int, args, out_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import run

    run_dir = out_dir / f"{method}_{pair}_s{seed}"
    overrides = [
        f"experiment={PROTOCOL.get(pair, pair)}", f"model={method}", f"seed={seed}", "model.tsne=false", "callbacks=none",
        f"trainer.max_epochs={args.epochs}", f"data.steps_per_epoch={args.steps_per_epoch}",
        f"data.batch_size={args.batch_size}", "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false", "++trainer.limit_val_batches=0", f"hydra.run.dir={run_dir}",
        *args.override,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the run reads it through HydraConfig, as under @hydra.main
    started = time.time()
    metrics, _ = run.train(cfg)
    return {"method": method, "pair": pair, "seed": seed, "target_acc": 100 * metrics["test/target_acc"],
            "source_acc": 100 * metrics["test/source_acc"], "proxy_a_distance": metrics.get("test/proxy_a_distance"),
            "seconds": round(time.time() - started, 1), "steps": args.epochs * args.steps_per_epoch,
            "batch_size": args.batch_size, "overrides": args.override}


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f} (1 seed)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(rows: list[dict], title: str = "Domain adaptation benchmark") -> str:
    commands = list(dict.fromkeys(r["command"] for r in rows))
    lines = [
        f"# {title}",
        "",
        f"Machine: 2-core CPU, no GPU, shared with other jobs (`torch.set_num_threads(1)`). "
        f"Date: {datetime.date.today()}. Target test accuracy (%), mean ± std over seeds; "
        f"model selection `select=last` (no target labels choose anything).",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    for pair in PAIRS:
        runs = [r for r in rows if r["pair"] == pair]
        if not runs:
            continue
        budget = runs[0]
        lines += [f"## {pair}", "",
                  f"{budget['steps']} steps of {budget['batch_size']} source + {budget['batch_size']} target images.", ""]
        paper = PAPER.get(pair)
        head = "| method | target acc | source acc | proxy A-dist | seeds | s/run |" + (" paper |" if paper else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for method in METHODS:
            mine = [r for r in runs if r["method"] == method]
            if not mine:
                continue
            pad = [r["proxy_a_distance"] for r in mine if r["proxy_a_distance"] is not None]
            row = (f"| {method} | {mean_std([r['target_acc'] for r in mine])} | "
                   f"{mean_std([r['source_acc'] for r in mine])} | {statistics.mean(pad):.2f} | "
                   f"{len(mine)} | {statistics.mean(r['seconds'] for r in mine):.0f} |")
            if paper:
                row += f" {paper.get(method, '—')} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["digits"], choices=PAIRS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=75)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--json", type=Path, default=RESULTS / "domain_adaptation.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "domain_adaptation.md",
                        help="markdown table written from --json (keep the pair apart per budget)")
    parser.add_argument("--title", default="Domain adaptation benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "domain_adaptation")
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown from the json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    store = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    if not args.report:
        command = "python benchmarks/domain_adaptation.py " + shlex.join(sys.argv[1:])
        for pair in args.pairs:
            for method in args.methods:
                for seed in args.seeds:
                    row = {**run_one(method, pair, seed, args, args.out), "command": command}
                    print(json.dumps(row), flush=True)
                    store = json.loads(args.json.read_text()) if args.json.is_file() else store
                    store["rows"] = [r for r in store["rows"]
                                     if (r["method"], r["pair"], r["seed"]) != (method, pair, seed)] + [row]
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(store, indent=1) + "\n")
    # hand-written analysis below "## Notes" survives regeneration
    md = args.md
    old = md.read_text() if md.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    md.write_text(report(store["rows"], args.title) + "\n" + notes)


if __name__ == "__main__":
    main()
