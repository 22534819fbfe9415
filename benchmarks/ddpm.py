"""DDPM benchmark: train the CPU-sized presets, score test/fid, and write benchmarks/results/ddpm.md.

    python benchmarks/ddpm.py                       # both presets, in parallel, one thread each
    python benchmarks/ddpm.py --presets ddpm_digits # one preset
    python benchmarks/ddpm.py --report-only         # rewrite the report from existing run dirs

Each preset is one `python run.py experiment=<preset>` call (training, then test: DDIM-50 on 1000 samples,
DDIM-50 vs ancestral sampling with all T=1000 steps on 200 samples, noise and real-vs-real references).
The test grid of each run is copied to docs/images/ddpm_<dataset>.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ holds scripts named like modules that would shadow the standard library for torch.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
PRESETS = {"ddpm_digits": "digits", "ddpm_mnist": "mnist"}


def launch(preset: str, run_dir: Path, extra: list[str], evaluate: bool = False) -> subprocess.Popen:
    """Train and test `preset` in run_dir; with `evaluate`, only test run_dir/checkpoints/last.ckpt in run_dir/eval."""
    if evaluate:
        extra = ["train=false", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", *extra]
        run_dir = run_dir / "eval"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, str(ROOT / "run.py"), f"experiment={preset}", "callbacks.progress_bar=null",
            f"hydra.run.dir={run_dir}", *extra]
    log = open(run_dir / "benchmark.log", "w")
    (run_dir / "command.txt").write_text(" ".join(["python", "run.py", *args[2:]]) + "\n")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, tuple[subprocess.Popen, Path, float]]) -> None:
    pending = dict(procs)
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        for preset, (proc, run_dir, started) in list(pending.items()):
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                timing = {"wall_s": time.time() - started, "cpu_s": usage.ru_utime + usage.ru_stime, "rc": proc.returncode}
                (run_dir / "timing.json").write_text(json.dumps(timing) + "\n")
                print(f"{preset}: rc={proc.returncode} {timing}", flush=True)
                del pending[preset]


def trained_steps(run_dir: Path) -> int | None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from lightning_modules.components.safe_load import safe_load

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return safe_load(ckpt, f"{ckpt} (benchmark run)")["global_step"] if ckpt.is_file() else None


def training_timing(run_dir: Path) -> dict:
    """train_timing.json (a stopped training run, read by hand) or timing.json of the full run."""
    for name in ("train_timing.json", "timing.json"):
        if (run_dir / name).is_file():
            return json.loads((run_dir / name).read_text())
    return {}


def report(out_dir: Path, presets: list[str]) -> str:
    rows, notes = [], []
    for preset in presets:
        train_dir = out_dir / preset
        run_dir = train_dir / "eval" if (train_dir / "eval" / "fid.json").is_file() else train_dir
        if not (run_dir / "fid.json").is_file():
            notes.append(f"- {preset}: no fid.json in {run_dir} (run failed or not run)")
            continue
        res = json.loads((run_dir / "results.json").read_text())
        fid = json.loads((run_dir / "fid.json").read_text())
        timing = training_timing(train_dir)
        m = res["metrics"]
        s = fid["samplers"]
        ratio = m["test/sample_ms_ancestral"] / m["test/sample_ms_ddim"]
        fid_gap = m["test/fid_ddim"] / m["test/fid_ancestral"] - 1
        rows.append(
            f"| {PRESETS[preset]} | {trained_steps(train_dir)} | {timing.get('wall_s', float('nan')) / 60:.1f} / {timing.get('cpu_s', float('nan')) / 60:.1f} "
            f"| {m['test/classifier_acc']:.3f} | **{m['test/fid']:.2f}** | {m['test/fid_noise']:.1f} | {m['test/fid_real']:.2f} "
            f"| {m['test/fid'] / m['test/fid_real']:.1f}x | {m['test/class_frac_min']:.3f} "
            f"| {m['test/fid_ddim']:.2f} / {m['test/fid_ancestral']:.2f} ({fid_gap:+.0%}) "
            f"| {m['test/sample_ms_ddim']:.1f} / {m['test/sample_ms_ancestral']:.1f} ({ratio:.0f}x) |"
        )
        hist = " ".join(f"{c}:{f:.3f}" for c, f in enumerate(s["ddim"]["class_fractions"]))
        commands = " then ".join(f"`{(d / 'command.txt').read_text().strip()}`" for d in dict.fromkeys([train_dir, run_dir]))
        notes.append(f"- {PRESETS[preset]}: {commands}; {timing.get('note', '')}; predicted-class "
                     f"fractions of the {s['ddim']['num_samples']} DDIM samples: {hist}")
        image = run_dir / "samples" / "test_ddim.png"
        if image.is_file():
            shutil.copyfile(image, ROOT / "docs" / "images" / f"ddpm_{PRESETS[preset]}.png")
    header = (
        "| data | steps | training wall / CPU min | classifier acc | test/fid (DDIM-50, N=1000) | noise FID | real-vs-real FID "
        "| fid / real | min class fraction | FID DDIM-50 / ancestral-1000 (N=compare_samples) | CPU ms per image DDIM / ancestral (speed-up) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *rows, "", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "ddpm")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--evaluate", action="store_true",
                        help="test the last checkpoint of an earlier (e.g. stopped) training run, in <run dir>/eval")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for every preset")
    args = parser.parse_args()
    if not args.report_only:
        where = {p: args.out_dir / p / ("eval" if args.evaluate else "") for p in args.presets}
        procs = {p: (launch(p, args.out_dir / p, args.overrides, args.evaluate), where[p], time.time()) for p in args.presets}
        wait_all(procs)
    table = report(args.out_dir, args.presets)
    print(table)
    table_file = args.out_dir / "table.md"  # pasted into benchmarks/results/ddpm.md with the notes there
    table_file.write_text(f"<!-- generated by benchmarks/ddpm.py on {datetime.date.today()} -->\n{table}\n")


if __name__ == "__main__":
    main()
