"""Transfer-learning benchmark: the course's strategy table made empirical on real digits.

Source task: USPS (`../shared/data/usps_train.npz`, 16x16 resized to 28x28): LeNet trained with
`experiment=finetune_source_usps` (random zoom-out and shift per image); its `encoder.pt` is the
pretrained backbone.
Target task: MNIST (`../shared/data/mnist_test.npz`, fixed stratified split seed 0: 7,000 train /
1,000 val / 2,000 test) with 100, 1,000 and all training labels (class-balanced subset,
`data.num_labels`, label_seed 0).
Rows: scratch (`model=supervised`), linear / partial / full (`model=finetune model.strategy=...`
from the USPS encoder). Distillation: the `full` fine-tuned LeNet (1,000 labels) as teacher, a
small CNN student (`small_cnn`, widths 8-16-32) distilled with the unlabeled training images in the
transfer set (`experiment=distill_mnist`) or with the labeled ones only (`model=distill`) vs trained
alone (`model=supervised`), same labels and steps. Every cell: mean +- std of test/acc over seeds.

Every run is `python run.py ...` (the project's runner) in its own run dir under --runs-dir;
finished runs (results.json with status completed) are reused, so an interrupted benchmark resumes.

    python benchmarks/transfer.py                      # full benchmark (CPU, ~1 h on 2 shared cores)
    python benchmarks/transfer.py --seeds 0 --budgets 100 --steps 20   # quick look
"""
from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/ holds scripts named like stdlib modules; keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MNIST_TRAIN_SIZE = 7000  # mnist_test.npz minus the 20% test and 10% val carved with split_seed 0
STRATEGIES = ("scratch", "linear", "partial", "full")
STUDENT = ["model.backbone.name=small_cnn", "model.backbone.widths=[8,16,32]"]


def run_dir(runs: Path, *parts) -> Path:
    return runs.joinpath(*map(str, parts))


def completed(where: Path) -> dict | None:
    results = where / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        if done.get("status") == "completed":
            return done
    return None


def launch(overrides: list[str], runs: Path, subdir: str, sweeps: dict[str, list[str]]) -> None:
    """One `python run.py -m` sweep (one process, single-threaded) over `sweeps` (option -> values);
    run dirs are `runs/<subdir>` (Hydra interpolations allowed). Finished runs are skipped by the caller."""
    sweep_args = [f"{key}={','.join(values)}" for key, values in sweeps.items()]
    args = [sys.executable, str(ROOT / "run.py"), "-m", *overrides, *sweep_args, "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false", "trainer.log_every_n_steps=10",
            f"hydra.sweep.dir={runs}", f"hydra.sweep.subdir={subdir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run.py -m {' '.join(overrides + sweep_args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"[{time.time() - started:5.0f}s] {subdir} {sweep_args}", flush=True)


def sweep_missing(runs: Path, row_dirs: dict, overrides: list[str], subdir: str, option: str | None) -> None:
    """Run the (row value, seed) pairs of `row_dirs` that have no completed results.json yet."""
    missing = [(value, seed) for (value, seed), where in row_dirs.items() if completed(where) is None]
    if not missing:
        return
    seeds = sorted({str(seed) for _, seed in missing})
    sweeps = {"seed": seeds}
    if option is not None:
        sweeps[option] = sorted({value for value, _ in missing})
    launch(overrides, runs, subdir, sweeps)


def schedule(num_labels: int, steps: int) -> tuple[int, int]:
    """(batch size, epochs) giving about `steps` optimizer steps on `num_labels` examples."""
    batch = min(64, num_labels // 2)
    per_epoch = num_labels // batch
    return batch, max(1, math.ceil(steps / per_epoch))


def target_overrides(budget: str, steps: int) -> list[str]:
    n = MNIST_TRAIN_SIZE if budget == "all" else int(budget)
    batch, epochs = schedule(n, steps)
    labels = "null" if budget == "all" else str(n)
    return [
        "data=npz", f"data.dataset.path={DATA / 'mnist_test.npz'}", f"data.batch_size={batch}",
        f"data.num_labels={labels}", f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={epochs}", f"callbacks.model_checkpoint.every_n_epochs={epochs}",
    ]


def mean_std(values: list[float]) -> str:
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.1f} ± {std:.1f}"


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["100", "1000", "all"])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per target run")
    parser.add_argument("--source-epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="run.py processes at a time (1 thread each)")
    parser.add_argument("--no-distill", action="store_true")
    parser.add_argument("--distill-steps", type=int, default=600, help="optimizer steps of every student run")
    parser.add_argument("--kd", nargs="+", default=["2,0.5", "4,0.9"],
                        help="distillation settings 'T,alpha' with the unlabeled images in the transfer set")
    parser.add_argument("--kd-labeled-only", nargs="*", default=["2,0.5"],
                        help="distillation settings 'T,alpha' with the labeled images only as transfer set")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.md")
    args = parser.parse_args()
    for name in ("mnist_test.npz", "usps_train.npz"):
        if not (DATA / name).is_file():
            sys.exit(f"{DATA / name} is missing: this benchmark needs the real data in ../shared/data")
    started = time.time()

    # 1. source task: LeNet on USPS (28x28); its encoder.pt is what every target run starts from
    runs = args.runs_dir
    source_dir = run_dir(runs, "source", "usps_zoom", "seed0")
    sweep_missing(runs, {(None, 0): source_dir}, ["experiment=finetune_source_usps", f"trainer.max_epochs={args.source_epochs}"],
                  "source/usps_zoom/seed${seed}", None)
    source = completed(source_dir)
    encoder = source_dir / "encoder.pt"

    # 2. target task: every strategy x label budget x seed; one `run.py -m` sweep per group
    runs = runs / f"steps{args.steps}"
    dirs = {(s, b, seed): run_dir(runs, s, b, f"seed{seed}") for b in args.budgets for s in STRATEGIES for seed in args.seeds}
    groups = []
    for b in args.budgets:
        base = target_overrides(b, args.steps)
        scratch = {(None, seed): dirs[("scratch", b, seed)] for seed in args.seeds}
        groups.append((scratch, ["model=supervised", *base], f"scratch/{b}/seed${{seed}}", None))
        tuned = {(s, seed): dirs[(s, b, seed)] for s in STRATEGIES[1:] for seed in args.seeds}
        groups.append((tuned, ["model=finetune", f"model.backbone.checkpoint={encoder}", "model.trainable_stages=1", *base],
                       f"${{model.strategy}}/{b}/seed${{seed}}", "model.strategy"))
    if "100" in args.budgets:  # full fine-tuning at the head's learning rate (backbone_lr_mult=1)
        dirs.update({("full_lr1", "100", seed): run_dir(runs, "full_lr1", "100", f"seed{seed}") for seed in args.seeds})
        lr1 = {(None, seed): dirs[("full_lr1", "100", seed)] for seed in args.seeds}
        groups.append((lr1, ["model=finetune", f"model.backbone.checkpoint={encoder}", "model.strategy=full",
                             "model.backbone_lr_mult=1.0", *target_overrides("100", args.steps)], "full_lr1/100/seed${seed}", None))
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(sweep_missing, runs, *group) for group in groups]:
            future.result()
    acc = {key: completed(where)["metrics"]["test/acc"] for key, where in dirs.items()}

    # 3. distillation on 1,000 labels: teacher = the `full` LeNet of the same seed (its last.ckpt); every
    #    student row gets about `--distill-steps` optimizer steps
    distill = {}
    if not args.no_distill and "1000" in args.budgets:
        student = [f"++{o}" for o in STUDENT]
        teacher = f"model.teacher.checkpoint='{runs}/full/1000/seed${{seed}}/checkpoints/last.ckpt'"
        alone = {(None, seed): run_dir(runs, "student_alone", "1000", f"seed{seed}") for seed in args.seeds}
        groups = [(alone, ["model=supervised", *student, *target_overrides("1000", args.distill_steps)],
                   "student_alone/1000/seed${seed}", None)]
        # transfer set = labeled + unlabeled training images (experiment=distill_mnist): 46 steps per epoch
        epochs = math.ceil(args.distill_steps / ((MNIST_TRAIN_SIZE - 1000) // 128))
        rows = {("all", kd): ["experiment=distill_mnist", f"trainer.max_epochs={epochs}",
                              f"trainer.check_val_every_n_epoch={epochs}"] for kd in args.kd}
        # transfer set = the labeled images only (LabeledDataModule), as the plain `model=distill`
        rows.update({("labeled", kd): ["model=distill", *student, *target_overrides("1000", args.distill_steps)]
                     for kd in args.kd_labeled_only})
        distilled = {}
        for (transfer, kd), overrides in rows.items():
            temperature, alpha = kd.split(",")
            name = f"student_distilled_{transfer}_T{temperature}_a{alpha}"
            where = {((transfer, kd), seed): run_dir(runs, name, "1000", f"seed{seed}") for seed in args.seeds}
            distilled.update(where)
            groups.append((where, [*overrides, teacher, f"model.temperature={temperature}", f"model.alpha={alpha}"],
                           f"{name}/1000/seed${{seed}}", None))
        with ThreadPoolExecutor(args.workers) as pool:
            for future in [pool.submit(sweep_missing, runs, *group) for group in groups]:
                future.result()
        distill = {("alone", seed): completed(where)["metrics"] for (_, seed), where in alone.items()}
        distill.update({(row, seed): completed(where)["metrics"] for (row, seed), where in distilled.items()})

    write_table(args, source, acc, distill, time.time() - started)


def write_table(args, source: dict, acc: dict, distill: dict, wall: float) -> None:
    cmd = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        "# Transfer learning: USPS -> MNIST (fine-tuning strategies, knowledge distillation)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, shared with other jobs; "
        f"1 thread per run, {args.workers} runs at a time)  ",
        f"Date: {datetime.date.today().isoformat()}; wall time of this invocation {wall / 60:.0f} min "
        "(finished runs are reused, so a resumed benchmark reports only its last part)  ",
        f"Seeds: {seeds} (test accuracy in %, mean ± std over seeds)",
        "",
        f"Source: LeNet (`experiment=finetune_source_usps`: `model=supervised`, random zoom-out 0.6-1 and shift "
        f"0.08 per image) on USPS train (28x28), {args.source_epochs} epochs: "
        f"test/acc {100 * source['metrics']['test/acc']:.1f}% on its held-out USPS split. "
        "Target: MNIST from `mnist_test.npz` (fixed split: 7,000 train / 1,000 val / 2,000 test), "
        f"about {args.steps} optimizer steps per run (batch 64, 50 for 100 labels), Adam lr 1e-3, cosine; "
        "backbone lr x0.1 for partial/full; partial = `model.trainable_stages=1` (LeNet's fc layer).",
        "",
        "| strategy | " + " | ".join(f"{b} labels" for b in args.budgets) + " |",
        "|---|" + "---|" * len(args.budgets),
    ]
    for s in STRATEGIES:
        cells = [mean_std([acc[(s, b, seed)] for seed in args.seeds]) for b in args.budgets]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if "100" in args.budgets:
        cells = [mean_std([acc[("full_lr1", b, seed)] for seed in args.seeds]) if b == "100" else "–" for b in args.budgets]
        lines.append("| full, backbone lr x1 | " + " | ".join(cells) + " |")
    if "100" in args.budgets:
        scratch = statistics.mean(acc[("scratch", "100", seed)] for seed in args.seeds)
        best = max([*STRATEGIES[1:], "full_lr1"], key=lambda s: statistics.mean(acc[(s, "100", seed)] for seed in args.seeds))
        gain = 100 * (statistics.mean(acc[(best, "100", seed)] for seed in args.seeds) - scratch)
        lines += ["", f"At 100 labels the best transfer strategy ({best}) beats scratch by {gain:+.1f} points "
                      f"(acceptance: >= +5)."]
    if distill:
        settings = [key for key in dict.fromkeys(k for k, _ in distill) if key != "alone"]
        first = settings[0]
        where = {"all": "1,000 labeled + 6,000 unlabeled images", "labeled": "the 1,000 labeled images"}
        rows = [("teacher: LeNet, full fine-tuning from USPS (1,000 labels, 150 steps)",
                 [distill[(first, s)]["test/teacher_acc"] for s in args.seeds]),
                ("student alone (small_cnn 8-16-32, `model=supervised`)", [distill[("alone", s)]["test/acc"] for s in args.seeds])]
        rows += [(f"student distilled, T={kd.split(',')[0]}, alpha={kd.split(',')[1]}, transfer set: {where[transfer]}",
                  [distill[((transfer, kd), s)]["test/acc"] for s in args.seeds]) for transfer, kd in settings]
        gains = {row: 100 * statistics.mean(distill[(row, s)]["test/acc"] - distill[("alone", s)]["test/acc"] for s in args.seeds)
                 for row in settings}
        lines += ["", "## Knowledge distillation on 1,000 MNIST labels", "",
                  "Teacher: the `full` row's LeNet (431k parameters) of the same seed, loaded from its "
                  "`checkpoints/last.ckpt`; student: `small_cnn` with widths 8-16-32 (18k parameters); "
                  f"same 1,000 labels, about {args.distill_steps} optimizer steps for every student (batch 64 labeled, "
                  "+128 unlabeled when they are in the transfer set; Adam 1e-3, cosine). Students with the unlabeled "
                  "images: `experiment=distill_mnist`; labeled only: `model=distill` with the same overrides as "
                  "the student alone.", "",
                  "| model | test acc (%) |", "|---|---|"]
        lines += [f"| {name} | {mean_std(values)} |" for name, values in rows]
        lines += [""] + [f"Distillation gain over the student alone, T={kd.split(',')[0]}, alpha={kd.split(',')[1]}, "
                         f"transfer set {transfer}: {gain:+.1f} points (mean of {len(args.seeds)} seeds)."
                         for (transfer, kd), gain in gains.items()]
    runs = args.runs_dir.relative_to(ROOT) if args.runs_dir.is_relative_to(ROOT) else args.runs_dir
    lines += ["", f"Per-run results: `{runs}/steps{args.steps}/<row>/<labels>/seed<k>/results.json` "
                  f"(source: `{runs}/source/usps_zoom/seed0`).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
