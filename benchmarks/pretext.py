"""Pretext-task benchmark: every pretext method beside rotation, SimCLR, MoCo and a random-init encoder.

    nice -n 10 python benchmarks/pretext.py --jobs 2                        # MNIST and digits_m, seeds 0 1 2
    python benchmarks/pretext.py --datasets digits_m --seeds 0 --methods jigsaw random_init
    python benchmarks/pretext.py --report-only                              # rebuild the table from finished runs

Protocol (the same for every method, stated in the report): the `small_cnn` encoder with widths 16-32-64
(64-d pooled features; `ddpm_encoder` uses its own U-Net down path, base 16 channels, 64-d features), batch 128,
Adam (each method's own learning rate: 1e-3, DCGAN 2e-4 with beta1 0.5, DDPM 2e-3), kNN (k=20) and the online linear
probe on held-out test images. MNIST = ../shared/data/mnist_test.npz split 8,000 train / 2,000 test
(`experiment=ssl_mnist`), 3 epochs; digits_m = the embedded colour digits, 1,437 train / 360 test, 15 epochs.
Each method uses its own config's augmentation (pretext tasks: one mildly cropped view). The random-init rows
run the same module with `model.train_encoder=false` (only BatchNorm statistics and the probe adapt).
Colorization needs colour images, so it has no MNIST row. Every run is single-threaded; finished runs
(outputs/benchmarks/pretext/<dataset>/<method>/seed<k>/results.json) are reused. Writes
benchmarks/results/pretext.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_many import results_of, run_job

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "benchmarks" / "pretext"
REPORT = ROOT / "benchmarks" / "results" / "pretext.md"

# method name in the table -> run.py overrides
METHODS = {
    "autoencoder": ["model=autoencoder"],
    "denoising_autoencoder": ["model=autoencoder", "model.noise=masking"],
    "vae_ssl": ["model=vae_ssl"],
    "colorization": ["model=colorization"],
    "inpainting": ["model=inpainting"],
    "gan_ssl": ["model=gan_ssl"],
    "ddpm_encoder": ["model=ddpm_encoder", "model.backbone.name=unet_encoder"],  # experiment=ssl_mnist names small_cnn
    "relative_position": ["model=relative_position"],
    "jigsaw": ["model=jigsaw"],
    "rotation": ["model=rotation"],
    "simclr": ["model=simclr"],
    "moco": ["model=moco"],
    "random_init": ["model=rotation", "model.train_encoder=false"],
    "random_init_unet": ["model=ddpm_encoder", "model.backbone.name=unet_encoder", "model.train_encoder=false"],
}
FAMILY = {"autoencoder": "generation", "denoising_autoencoder": "generation", "vae_ssl": "generation",
          "colorization": "generation", "inpainting": "generation", "gan_ssl": "generation",
          "ddpm_encoder": "generation", "relative_position": "context", "jigsaw": "context", "rotation": "context",
          "simclr": "contrastive", "moco": "contrastive", "random_init": "baseline", "random_init_unet": "baseline"}
DATASETS = {
    "mnist": ["experiment=ssl_mnist", "trainer.max_epochs=3"],
    "digits_m": ["data=digits_m", "data.batch_size=128", "data.val_fraction=0.0", "data.augment.flip_p=0.0",
                 "trainer.max_epochs=15", "+model.backbone.widths=[16,32,64]"],
}
GREY = {"mnist"}  # colorization has nothing to predict there
# digits_m runs on the methods' defaults, which the defaults benchmark (issue 18) has since moved; these rows
# keep the settings they were measured with, so the table still reproduces
OLD_VIEWS = ["data.augment.crop_scale=null", "data.augment.jitter_strength=0.5", "data.augment.grayscale_p=null",
             "data.augment.blur_p=null"]
MEASURED_WITH = {
    "simclr": ["model.temperature=0.2", *OLD_VIEWS],
    "moco": ["model.temperature=0.2", "model.queue_size=4096", "model.bn_splits=8", "model.symmetric=false", *OLD_VIEWS],
    "rotation": ["model.head_hidden_dim=0", "data.augment.jitter_strength=0.5"],
}


def run_dir(dataset: str, method: str, seed: int) -> Path:
    return OUT / dataset / method / f"seed{seed}"


def overrides(dataset: str, method: str, seed: int) -> list[str]:
    pinned = MEASURED_WITH.get(method, []) if dataset == "digits_m" else []
    return [*METHODS[method], *DATASETS[dataset], *pinned, f"seed={seed}", "model.evaluation.tsne=false", "logger=csv"]


def read(dataset: str, method: str, seed: int) -> dict | None:
    return results_of(run_dir(dataset, method, seed))


def run_one(job) -> None:
    try:
        run_job(overrides(*job), run_dir(*job))  # one thread; a finished run is reused
    except RuntimeError as err:
        print(f"FAILED {job}: {str(err)[-1500:]}", flush=True)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(datasets: list[str]) -> str:
    lines = ["| dataset | method | family | seeds | s / run | test/knn_acc | test/linear_acc | kNN - random | linear - random |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        runs = {m: [r for s in range(3) if (r := read(dataset, m, s))] for m in METHODS}
        for method, rs in runs.items():
            if not rs:
                continue
            ref = runs["random_init_unet" if method == "ddpm_encoder" else "random_init"]  # same encoder, untrained
            base = {"knn": [r["metrics"]["test/knn_acc"] * 100 for r in ref],
                    "lin": [r["metrics"]["test/linear_acc"] * 100 for r in ref]}
            knn = [r["metrics"]["test/knn_acc"] * 100 for r in rs]
            lin = [r["metrics"]["test/linear_acc"] * 100 for r in rs]
            baseline_row = method.startswith("random_init")

            def gap(v, b, baseline_row=baseline_row):
                return f"{statistics.mean(v) - statistics.mean(b):+.1f}" if b and not baseline_row else "-"

            wall = statistics.mean(r["wall_time_s"] for r in rs)
            lines.append(f"| {dataset} | {method} | {FAMILY[method]} | {len(rs)} | {wall:.0f} | {fmt(knn)} | {fmt(lin)} | "
                         f"{gap(knn, base['knn'])} | {gap(lin, base['lin'])} |")
    return "\n".join(lines)


# The seed's two tables (course notes, "Generation-Based Pretext Tasks" and "Context-Based Pretext Task"), with
# the methods that measure each row; rows nothing here implements say so.
SEED_GENERATION = [
    ("Autoencoder", "Data compression & reconstruction", "General feature extractor", ["autoencoder", "denoising_autoencoder", "vae_ssl"]),
    ("GAN (Discriminator)", "Visual realism, texture, structure", "Object recognition, classification", ["gan_ssl"]),
    ("Diffusion Models", "Progressive denoising, image structure", "Medical imaging, few-shot learning", ["ddpm_encoder"]),
    ("Colorization", "Semantic color understanding", "Object and scene understanding", ["colorization"]),
    ("Super Resolution", "Detail recovery, fine structure", "High-resolution classification, editing", []),
    ("Inpainting", "Spatial context, semantic filling", "Object boundaries, segmentation", ["inpainting"]),
    ("Video Prediction", "Motion, continuity, causality", "Action recognition, tracking", []),
]
SEED_CONTEXT = [
    ("Rotation Prediction", "Global object orientation", "Geometric", ["rotation"]),
    ("Relative Patch Prediction", "Local spatial relationships", "Spatial context", ["relative_position"]),
    ("Jigsaw Puzzle", "Part-whole reasoning, object structure", "Spatial rearrangement", ["jigsaw"]),
    ("Frame Order Prediction/Verification", "Temporal coherence, motion understanding", "Temporal ordering", []),
    ("Arrow of Time", "Motion causality, direction detection", "Temporal reasoning", []),
    ("(contrastive, for comparison) SimCLR / MoCo v2", "Invariance to augmentations", "General", ["simclr", "moco"]),
]


def measured(method: str) -> str:
    """'MNIST kNN / linear; digits_m kNN / linear' (means over the finished seeds, %, with the gain over random init)."""
    parts = []
    for dataset in DATASETS:
        runs = [r for s in range(3) if (r := read(dataset, method, s))]
        base = [r for s in range(3) if (r := read(dataset, "random_init_unet" if method == "ddpm_encoder" else "random_init", s))]
        if not runs:
            parts.append(f"{dataset}: -")
            continue
        def mean(rs, k):
            return statistics.mean(r["metrics"][k] * 100 for r in rs)

        knn, lin = mean(runs, "test/knn_acc"), mean(runs, "test/linear_acc")
        gain = f" ({knn - mean(base, 'test/knn_acc'):+.1f} / {lin - mean(base, 'test/linear_acc'):+.1f})" if base else ""
        parts.append(f"{dataset}: {knn:.1f} / {lin:.1f}{gain}")
    return f"**{method}** " + "; ".join(parts)


def seed_tables() -> str:
    out = []
    for title, third, rows in (("Generation-based", "Downstream utility", SEED_GENERATION),
                               ("Context-based", "Challenge type", SEED_CONTEXT)):
        out += [f"**{title}** (measured: test kNN / linear probe %, in brackets the gain over the random-init encoder)", "",
                f"| Pretext task | What it learns | {third} | measured here |", "|---|---|---|---|"]
        for task, learns, utility, methods in rows:
            cell = "<br>".join(measured(m) for m in methods) if methods else "not implemented (no such data / not in issue 20)"
            out.append(f"| {task} | {learns} | {utility} | {cell} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each single-threaded)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        jobs = [(d, m, s) for s in args.seeds for d in args.datasets for m in args.methods
                if not (m == "colorization" and d in GREY)]
        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(run_one, jobs):
                pass
    text = table(list(DATASETS)) + "\n\n" + seed_tables()
    print(text)
    header = REPORT.read_text().split("<!-- table -->")[0] if REPORT.is_file() else "# Pretext tasks\n\n"
    REPORT.write_text(f"{header}<!-- table -->\n{text}\n\nGenerated {datetime.date.today()} by "
                      f"`python benchmarks/pretext.py`; machine: {platform.machine()} {os.cpu_count()}-core CPU, "
                      f"no GPU, shared with other jobs (each run one thread).\n")


if __name__ == "__main__":
    main()
