"""Run many `python run.py ...` jobs (a few at a time, one CPU thread each) and read their results.

A job whose run dir already holds a completed results.json is not run again, so a benchmark that
was cut short continues where it stopped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_of(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results if results.get("status") == "completed" else None


def run_job(overrides: list[str], run_dir: Path, threads: int = 1) -> dict:
    done = results_of(run_dir)
    if done is not None:
        return done
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, str(ROOT / "run.py"), *overrides, "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    print(f"done: {run_dir.name}", flush=True)
    return results_of(run_dir)


def run_jobs(jobs: dict[str, list[str]], out_root: Path, parallel: int = 2, threads: int = 1) -> dict[str, dict]:
    """`jobs`: name -> overrides. Returns name -> results.json of each run (run dir out_root/name)."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(run_job, overrides, out_root / name, threads) for name, overrides in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def write_report(out: Path, lines: list[str], runs_dir: Path, layout: str) -> None:
    """Write a benchmark's markdown report, ending with where its per-run results lie
    (`runs_dir/layout`), and print it."""
    runs = runs_dir.relative_to(ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir
    lines = [*lines, "", f"Per-run results: `{runs}/{layout}`.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 3, each: bool = False) -> str:
    """'mean ± sd' of `values` x scale (sd 0 for one value); `each` appends the single values."""
    import statistics

    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"
    return text + (" (" + ", ".join(f"{scale * v:.{max(0, digits - 1)}f}" for v in values) + ")" if each else "")


def append_table(path: Path, lines: list[str]) -> None:
    """Append a measured table (with a blank line after it) to `path` and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))
