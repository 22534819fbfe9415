"""Assemble benchmarks/RESULTS.md from the tables the benchmark scripts write to benchmarks/results/.

    python benchmarks/collect_results.py

Each benchmark script writes its own `benchmarks/results/<topic>.md` (measured numbers, the command
that made them, machine and date); this file only puts them in one place, in a fixed order.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["supervised", "transfer", "ssl", "ssl_textured", "domain_adaptation", "domain_adaptation_long", "domain_adaptation_aug",
         "clustering", "pseudolabel", "pseudolabel_runs",
         "ddpm", "operations", "throughput"]


def demote_title(text: str) -> str:
    """Each part's own '# Title' becomes a '## ' section of RESULTS.md."""
    return "#" + text if text.startswith("# ") else text


def main() -> None:
    parts = sorted((HERE / "results").glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    header = [
        "# Benchmark results",
        "",
        "Every table below was measured by the script and command named in its section, on the machine",
        "it names. This file is assembled by `python benchmarks/collect_results.py` from",
        "`benchmarks/results/*.md`; rerun a benchmark script, then this, to update it.",
        "",
    ]
    body = [demote_title(p.read_text().strip()) + "\n" for p in parts]
    (HERE / "RESULTS.md").write_text("\n".join(header) + "\n" + "\n---\n\n".join(body))
    print(f"wrote {HERE / 'RESULTS.md'} from {[p.name for p in parts]}")


if __name__ == "__main__":
    main()
