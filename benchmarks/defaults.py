"""Defaults benchmark: every method with nothing but `model=`, `data=` (and the size / channels the data
needs) on datasets it has no preset for, beside its baseline measured the same way.

    python benchmarks/defaults.py                                   # every row, seeds 0 1 2
    python benchmarks/defaults.py --methods pseudolabel --datasets mnist usps --seeds 0
    python benchmarks/defaults.py --report                          # rewrite the table from the json

Each run is a whole `python run.py model=M <data options> seed=S hydra.run.dir=...` process, the command a
user types (printed in the table). Baselines, same data and budget:
  self-supervised  random-init encoder (`model.train_encoder=false`): test/knn_acc, test/linear_acc
  semi-supervised  supervised-only on the same labels (`model.alpha_f=0`): test/acc
  domain adapt.    source-only (`model=source_only`): test/target_acc
  clustering       k-means (k = the classes) on the raw pixels of the same test split, in this process: test/nmi, test/ari
  generation       no baseline run: test/fid beside the FID of Gaussian noise (test/fid_noise, same run) and
                   test/class_frac_min (target: every class >= 5%)
Targets (issue 18): SSL kNN >= random init + 15; Pseudo-Label above supervised-only with train/alpha > 0;
DDPM every class >= 5%; every DA method >= source-only.
Rows accumulate in benchmarks/results/defaults.json; the table goes to benchmarks/results/defaults.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
NOTES = "## Notes"
FOLDERS = ROOT / "outputs" / "benchmarks" / "defaults" / "data"
sys.path.insert(0, str(ROOT))
from benchmarks.run_many import mean_sd  # noqa: E402

# Datasets none of the presets was tuned on, as a user would pass them.
SINGLE = {
    "usps": ["data=npz", f"data.dataset.train_path={SHARED}/usps_train.npz", f"data.dataset.test_path={SHARED}/usps_test.npz"],
    "mnist": ["data=npz", f"data.dataset.path={SHARED}/mnist_test.npz", "data.val_fraction=0"],  # 8,000 / 2,000
    "mnist_photo": ["data=imagefolder", f"data.dataset.root={FOLDERS}/mnist_photo", "data.image_size=32", "data.channels=3"],
    "webcam": ["data=imagefolder", f"data.dataset.root={SHARED}/office31/webcam", "data.image_size=64", "data.channels=3"],
}
PAIRS = {
    "mnist_to_photo": ["data=pair", "data.source.name=npz", f"+data.source.path={SHARED}/mnist_test.npz",
                       "data.target.name=imagefolder", f"data.target.root={FOLDERS}/mnist_photo", "data.channels=3"],
    "usps_to_mnist": ["data=pair", "data.source.name=npz", f"+data.source.train_path={SHARED}/usps_train.npz",
                      f"+data.source.test_path={SHARED}/usps_test.npz", "data.target.name=npz",
                      f"+data.target.path={SHARED}/mnist_test.npz"],
}
PIXELS = "k-means on the raw test pixels"  # a baseline computed here, not a run
FAMILY = {
    "self_supervised": (["simclr", "moco", "rotation"], ["model.train_encoder=false"], ["test/knn_acc", "test/linear_acc"]),
    "semi_supervised": (["pseudolabel"], ["model.alpha_f=0"], ["test/acc", "train/alpha"]),
    "domain_adaptation": (["dann", "adda", "drcn", "dan", "coral"], ["model=source_only"], ["test/target_acc"]),
    "clustering": (["deepcluster"], [PIXELS], ["test/nmi", "test/ari"]),
    "generation": (["ddpm"], None, ["test/fid", "test/fid_noise", "test/class_frac_min"]),  # fid_noise: the baseline
}
DATASETS = {"self_supervised": ["mnist_photo", "mnist"], "semi_supervised": ["mnist", "usps"],
            "domain_adaptation": ["mnist_to_photo", "usps_to_mnist"], "clustering": ["usps", "mnist_photo"],
            "generation": ["usps", "mnist"]}


def family_of(method: str) -> str:
    return next(f for f, (methods, _, _) in FAMILY.items() if method in methods)


def write_mnist_photo_folder(limit: int = 10_000) -> None:
    """MNIST blended with photo patches (MNIST-M's rule), written as PNGs: a folder nobody tuned for."""
    root = FOLDERS / "mnist_photo"
    if root.is_dir():
        return
    from PIL import Image

    from datamodules.registry import DATASETS

    raw = DATASETS["npz"](path=str(SHARED / "mnist_test.npz"), blend_with_photos=True, blend_seed=0)
    images, labels = raw.splits["all"]
    images = images.numpy() if hasattr(images, "numpy") else images
    if images.ndim == 4 and images.shape[1] == 3:  # N, C, H, W -> N, H, W, C
        images = images.transpose(0, 2, 3, 1)
    for i in range(min(limit, len(labels))):
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


def relative(arg: str) -> str:
    """An argument as the table prints it: paths relative to the repository root."""
    return arg.replace(f"{ROOT}/", "").replace(str(ROOT.parent), "..")


def run_one(method: str, dataset: str, seed: int, baseline: bool, out: Path) -> dict:
    fam = family_of(method)
    extra = FAMILY[fam][1] if baseline else []
    if extra == [PIXELS]:
        return raw_pixel_row(method, dataset, seed)
    data = PAIRS.get(dataset) or SINGLE[dataset]
    arm = "baseline" if baseline else "default"
    # a baseline that is another method (source-only) is one run per dataset and seed, shared by the family
    name = extra[0].removeprefix("model=") if extra and extra[0].startswith("model=") else method
    run_dir = out / f"{name}_{dataset}_{arm}_s{seed}"
    model = [a for a in extra if a.startswith("model=")] or [f"model={method}"]
    args = [*model, *data, f"seed={seed}", *[a for a in extra if not a.startswith("model=")],
            "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"]
    command = "python run.py " + shlex.join(relative(a) for a in args[:-1])
    results = run_dir / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "completed":
        return cached_row(method, dataset, seed, arm, command, results)  # a rerun skips finished runs
    started = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    row = {"method": method, "dataset": dataset, "seed": seed, "arm": arm, "command": command,
           "seconds": round(time.time() - started, 1), "returncode": proc.returncode}
    if proc.returncode == 0 and results.is_file():
        metrics = json.loads(results.read_text())["metrics"]
        row["metrics"] = {k: metrics.get(k) for k in FAMILY[fam][2]}
    else:
        row["error"] = (proc.stderr or proc.stdout)[-600:]
    return row


def raw_pixel_row(method: str, dataset: str, seed: int) -> dict:
    """k-means with k = the classes on the flattened test pixels that the run's test split holds."""
    from datamodules.registry import load_dataset
    from lightning_modules.deepcluster import clustering_scores

    options = dict(a.removeprefix("data.").split("=", 1) for a in SINGLE[dataset] if a.startswith("data."))
    spec = {"name": options.pop("name", SINGLE[dataset][0].split("=")[1]),
            **{k.removeprefix("dataset."): v for k, v in options.items() if k.startswith("dataset.")}}
    size, channels = options.get("image_size"), options.get("channels")
    test = load_dataset(spec, int(size) if size else None, int(channels) if channels else None).test
    started = time.time()
    scores = clustering_scores(test.images.flatten(1).float(), test.labels, int(test.labels.max()) + 1, None, False,
                               seed=seed)
    return {"method": method, "dataset": dataset, "seed": seed, "arm": "baseline", "command": PIXELS,
            "seconds": round(time.time() - started, 1), "returncode": 0,
            "metrics": {"test/nmi": scores["nmi"], "test/ari": scores["ari"]}}


def cached_row(method, dataset, seed, arm, command, results: Path) -> dict:
    payload = json.loads(results.read_text())
    metrics = payload["metrics"]
    return {"method": method, "dataset": dataset, "seed": seed, "arm": arm, "command": command,
            "seconds": payload.get("wall_time_s"), "returncode": 0,
            "metrics": {k: metrics.get(k) for k in FAMILY[family_of(method)][2]}}


def cell(values: list, scale: float) -> str:
    """'mean ± sd' of the runs that finished, '-' when none did."""
    values = [v for v in values if v is not None]
    return mean_sd(values, scale, digits=1) if values else "-"


def report(rows: list[dict]) -> str:
    lines = ["# Defaults benchmark", "", "Every method with no option beyond `model=` and `data=` (plus the size / channels the",
             "data needs), beside its baseline on the same data and budget. Generated by `benchmarks/defaults.py`.", "",
             "| method | data | metric | default | baseline | seeds | seconds per run |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["method"], r["dataset"]) for r in rows})
    for method, dataset in keys:
        fam = family_of(method)
        for metric in FAMILY[fam][2]:
            scale = 1 if metric in ("test/fid", "test/fid_noise", "train/alpha") else 100
            arms = {arm: [r for r in rows if (r["method"], r["dataset"], r["arm"]) == (method, dataset, arm)]
                    for arm in ("default", "baseline")}
            values = {arm: [r.get("metrics", {}).get(metric) for r in rs] for arm, rs in arms.items()}
            seconds = [r["seconds"] for r in arms["default"]]
            lines.append(f"| {method} | {dataset} | {metric} | {cell(values['default'], scale)} | "
                         f"{cell(values['baseline'], scale)} | {len(arms['default'])} | "
                         f"{statistics.mean(seconds):.0f} |" if seconds else "")
    failed = [r for r in rows if r["returncode"] != 0]
    commands = sorted({re.sub(r"\bseed=\d+", "seed=S", r["command"]) for r in rows})
    lines += ["", "Commands (each with `seed=S`, S = the seeds counted):", "", *[f"    {c}" for c in commands]]
    if failed:
        lines += ["", "Failed runs:", "", *[f"- `{r['command']}`: {r.get('error', '')[-200:]!r}" for r in failed]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[m for f in FAMILY.values() for m in f[0]])
    parser.add_argument("--datasets", nargs="+", default=None, help="default: the two of each family")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=RESULTS / "defaults.json")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "defaults")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    store = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    for row in store["rows"]:  # rows of an earlier version printed ../main/... for paths in the repository
        row["command"] = row["command"].replace("../main/", "")
    if not args.report:
        write_mnist_photo_folder()
        for method in args.methods:
            fam = family_of(method)
            for dataset in args.datasets or DATASETS[fam]:
                for seed in args.seeds:
                    for baseline in ([False, True] if FAMILY[fam][1] else [False]):
                        row = run_one(method, dataset, seed, baseline, args.out)
                        print(json.dumps(row), flush=True)
                        key = (row["method"], row["dataset"], row["seed"], row["arm"])
                        # reread: another defaults.py (other methods, in parallel) may have added rows meanwhile
                        store = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
                        store["rows"] = [r for r in store["rows"]
                                         if (r["method"], r["dataset"], r["seed"], r["arm"]) != key] + [row]
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(json.dumps(store, indent=1) + "\n")
    md = RESULTS / "defaults.md"
    notes = md.read_text().partition(NOTES)[2] if md.is_file() else ""  # hand-written, kept across reruns
    md.write_text(report(store["rows"]) + (f"\n{NOTES}{notes}" if notes else ""))
    print(report(store["rows"]))


if __name__ == "__main__":
    main()
