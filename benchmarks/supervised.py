"""Foundation checks on real data: LeNet on MNIST (`../shared/data/mnist_test.npz`, auto-split
70/10/20 with split_seed 0), one process vs `trainer=ddp_cpu` (2 processes, gloo), and the main
job's wall time. Writes benchmarks/results/supervised.md.

    python benchmarks/supervised.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_many import run_job  # noqa: E402

MNIST = ["model=supervised", "data=npz", "data.dataset.path=../shared/data/mnist_test.npz"]


def main() -> None:
    out = ROOT / "outputs" / "benchmarks" / "supervised"
    rows = []
    for name, overrides in [("main job (`python run.py`)", []), ("MNIST, 1 process", MNIST),
                            ("MNIST, trainer=ddp_cpu (2 processes)", [*MNIST, "trainer=ddp_cpu"])]:
        started = time.time()
        results = run_job(overrides, out / name.split(" ")[0].lower().replace(",", "") / str(len(rows)), threads=2)
        rows.append((name, overrides, results["metrics"]["test/acc"], time.time() - started, results["wall_time_s"]))
    lines = [
        "# Supervised baseline (foundation checks)",
        "",
        "Command: `python benchmarks/supervised.py`  ",
        f"Machine: {platform.machine()} CPU, 2 cores, no GPU; date {datetime.date.today()}",
        "",
        "| run | overrides | test/acc | wall time incl. start-up (s) | fit+test (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | `{' '.join(o) or '(none)'}` | {100 * a:.2f}% | {w:.0f} | {t:.0f} |" for n, o, a, w, t in rows]
    diff = abs(rows[1][2] - rows[2][2]) * 100
    lines += ["", f"DDP vs one process: {diff:.2f} points apart (acceptance: within 1 point; LeNet >= 97%)."]
    path = ROOT / "benchmarks" / "results" / "supervised.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
