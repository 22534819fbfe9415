"""Runs of runs, measured: k-fold cross-validation on Office-31 webcam, the main job over seeds, and the
SSL -> fine-tune label-efficiency curve on MNIST (../shared/data/mnist_test.npz).

Each job is one `python run.py ...` command with a fixed run dir under outputs/benchmarks/protocols/, so a
rerun reuses every finished fold, stage and job (the protocols' own resume). The tables go to
benchmarks/results/protocols.md and benchmarks/RESULTS.md; the curve and bar plots to the run dirs.

    python benchmarks/protocols.py office_cv          # cv.folds=5, pretrained Lite0, linear head, 112 px
    python benchmarks/protocols.py main               # python run.py (the main job) for seeds 0 1 2
    python benchmarks/protocols.py ssl_mnist --seeds 0 1 2 --pretrain-epochs 5
    python benchmarks/protocols.py optuna --trials 8 && python benchmarks/protocols.py optuna --trials 12   # resumes
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from benchmarks.run_many import ROOT, append_table, mean_sd  # noqa: E402

OUT = ROOT / "outputs" / "benchmarks" / "protocols"
SHARED = ROOT.parent / "shared" / "data"


def office_cv(args) -> list[str]:
    return ["model=finetune", "data=office31", f"data.dataset.root={SHARED / 'office31'}", "data.dataset.domain=webcam",
            "model.strategy=linear", "model.backbone.name=tf_efficientnet_lite0", "model.backbone.pretrained=true",
            "data.image_size=112", f"cv.folds={args.folds}", f"trainer.max_epochs={args.epochs}"]


def main_job(args) -> list[str]:
    return ["-m", "pipeline=main", "seed=" + ",".join(map(str, args.seeds))]


def ssl_mnist(args) -> list[str]:
    return ["-m", "pipeline=ssl_finetune", "data=npz", f"data.dataset.path={SHARED / 'mnist_test.npz'}",
            f"pipeline.pretrain_epochs={args.pretrain_epochs}", "seed=" + ",".join(map(str, args.seeds))]


def optuna_study(args) -> list[str]:
    """DANN's preset on digits -> digits_m at 5 epochs a trial; the study in an SQLite file beside the run dir,
    so the command with a larger --trials continues it."""
    return ["hparams_search=dann_optuna", f"optuna.trials={args.trials}", "model.tsne=false", "trainer.max_epochs=5",
            f"optuna.storage=sqlite:///{OUT / 'dann_optuna.db'}", "optuna.study_name=dann_digits_to_digits_m"]


JOBS = {"office_cv": office_cv, "main": main_job, "ssl_mnist": ssl_mnist, "optuna": optuna_study}


def run(name: str, overrides: list[str]) -> tuple[Path, float, str]:
    run_dir = OUT / (f"{name}_{overrides[1].split('=')[1]}" if name == "optuna" else name)
    where = f"hydra.sweep.dir={run_dir}" if overrides[0] == "-m" else f"hydra.run.dir={run_dir}"
    command = [sys.executable, "run.py", *overrides, "callbacks.progress_bar=null", where]
    load = os.getloadavg()[0]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = " ".join(command[1:])
    return run_dir, time.time() - started, f"`python {text}` (load average at start {load:.1f})"


def header(name: str, command: str, wall: float) -> list[str]:
    return [f"### {name} ({datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, "
            f"load average now {os.getloadavg()[0]:.1f})", "", command, "", f"wall time of this command: {wall:.0f} s "
            "(finished children reused when the command is rerun)", ""]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def table_office_cv(run_dir: Path) -> list[str]:
    parent = results(run_dir)
    lines = ["| fold | test/acc (%) | wall time (s) |", "|---|---|---|"]
    for fold in parent["folds"]:
        lines.append(f"| {fold['dir']} | {100 * fold['metrics']['test/acc']:.1f} | "
                     f"{results(run_dir / fold['dir'])['wall_time_s']:.0f} |")
    lines.append(f"| mean ± std (results.json) | {100 * parent['metrics']['test/acc']:.1f} ± "
                 f"{100 * parent['metrics_std']['test/acc']:.1f} | |")
    return lines


def stage_values(sweep_dir: Path) -> tuple[dict[str, list[float]], list[float]]:
    """stage -> its headline value in every job; the jobs' wall times."""
    values: dict[str, list[float]] = {}
    walls = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "results.json").is_file()):
        parent = results(job)
        walls.append(sum(s["wall_time_s"] or 0 for s in parent["stages"]))
        for stage in parent["stages"]:
            values.setdefault(stage["name"], []).append(stage["value"])
    return values, walls


def table_stages(sweep_dir: Path) -> list[str]:
    values, walls = stage_values(sweep_dir)
    lines = ["| stage | test accuracy (%), mean ± sd (each seed) |", "|---|---|"]
    lines += [f"| {name} | {mean_sd(v, 100, 1, each=True)} |" for name, v in values.items()]
    return lines + ["", f"stage wall time per job (s, sum of its stages): {', '.join(f'{w:.0f}' for w in walls)}; "
                        f"plots: {sweep_dir}/summary.png, curve.png (if any)"]


def table_study(run_dir: Path) -> list[str]:
    return (run_dir / "study.md").read_text().splitlines()[2:]


TABLES = {"office_cv": table_office_cv, "main": table_stages, "ssl_mnist": table_stages, "optuna": table_study}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    run_dir, wall, command = run(args.job, JOBS[args.job](args))
    lines = header(args.job, command, wall) + TABLES[args.job](run_dir)
    for path in (ROOT / "benchmarks" / "results" / "protocols.md", ROOT / "benchmarks" / "RESULTS.md"):
        append_table(path, lines)


if __name__ == "__main__":
    main()
