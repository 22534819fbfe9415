"""Distillation with a pretrained teacher on real photos: the three kinds of distilled knowledge.

Teacher: ImageNet EfficientNet-Lite0 fine-tuned on Office-31 amazon (`model=finetune model.strategy=full`,
backbone at 0.1 x lr), its `encoder.pt` (backbone + head). Students: a small CNN (`small_cnn`, widths
--widths) trained on the same labeled amazon photos, the same steps:
- `alone`: cross-entropy only (`model=supervised`);
- `response`: Hinton et al.'s soft targets (`model=distill`, T 4, alpha 0.9);
- `+ feature`: response + FitNets' hint loss (`model.hint.weight`, middle stage of each network);
- `+ relation`: response + RKD distance- and angle-wise losses (`model.relation.distance` / `angle`,
  25 / 50 as in RepDistiller);
- `relation only`: cross-entropy + RKD, no soft targets (alpha 0).
Every cell: amazon test accuracy (%), mean ± sd over seeds; the teacher's own accuracy beside it.

    python benchmarks/office31_distill.py                       # 3 seeds, 112 px
    python benchmarks/office31_distill.py --seeds 0 --student-epochs 5

Every run is `python run.py ...` in its own run dir under --runs-dir; finished runs are reused.
"""
from __future__ import annotations

import sys
from pathlib import Path

# the repository root instead of this folder, whose scripts would shadow stdlib modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

from benchmarks.run_many import ROOT, mean_sd, run_job, run_jobs, write_report  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "office31"
STUDENTS = {
    "alone": ["model=supervised"],
    "response": ["model=distill"],
    "+ feature": ["model=distill", "model.hint.weight=1.0"],
    "+ relation": ["model=distill", "model.relation.distance=25", "model.relation.angle=50"],
    "relation only": ["model=distill", "model.alpha=0.0", "model.relation.distance=25", "model.relation.angle=50"],
}


def common(args, seed: int) -> list[str]:
    return [
        "data=office31", f"data.dataset.root={args.data}", f"data.dataset.domain={args.domain}",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
        "callbacks.model_checkpoint=null", f"seed={seed}",
    ]


def teacher_job(args) -> list[str]:
    return ["model=finetune", "model.strategy=full", "model.backbone.name=tf_efficientnet_lite0",
            "model.backbone.pretrained=true", f"trainer.max_epochs={args.teacher_epochs}", *common(args, 0)]


def student_job(kind: str, teacher_dir: Path, seed: int, args) -> list[str]:
    teacher = [f"model.teacher.checkpoint={teacher_dir / 'encoder.pt'}"] if kind != "alone" else []
    return [*STUDENTS[kind], *teacher, "model.backbone.name=small_cnn", f"++model.backbone.widths=[{args.widths}]",
            f"trainer.max_epochs={args.student_epochs}", *common(args, seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="amazon", choices=["amazon", "webcam", "dslr"])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--widths", default="16,32,64", help="the small CNN student's stage widths")
    parser.add_argument("--parallel", type=int, default=2, help="run.py processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per run")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "benchmarks" / "office31_distill")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/office31_distill_<size>px.md")
    args = parser.parse_args()
    if not (args.data / args.domain).is_dir():
        sys.exit(f"{args.data / args.domain} is missing: this benchmark needs Office-31 under --data")
    started = time.time()
    teacher_dir = args.runs_dir / f"{args.image_size}px" / "teacher"
    teacher = run_job(teacher_job(args), teacher_dir, args.threads * args.parallel)
    keys = [(kind, seed) for kind in args.students for seed in args.seeds]
    name = lambda kind, seed: f"{args.image_size}px/{kind.strip('+ ').replace(' ', '_')}/seed{seed}"  # noqa: E731
    jobs = {name(kind, seed): student_job(kind, teacher_dir, seed, args) for kind, seed in keys}
    results = run_jobs(jobs, args.runs_dir, args.parallel, args.threads)
    write_table(args, teacher, {key: results[name(*key)] for key in keys}, time.time() - started)


def write_table(args, teacher: dict, results: dict, wall: float) -> None:
    out = args.out or ROOT / "benchmarks" / "results" / f"office31_distill_{args.image_size}px.md"
    m = teacher["machine"]
    walls = [r["wall_time_s"] for r in results.values()]
    lines = [
        f"# Distillation from an ImageNet-pretrained teacher, Office-31 {args.domain}, {args.image_size} px",
        "",
        f"Command: `python benchmarks/office31_distill.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {m.get('cpus')} CPU cores, GPU {m.get('gpu')}, {platform.processor() or platform.machine()}; "
        f"{args.threads} thread(s) per run, {args.parallel} runs at a time  ",
        f"Date: {datetime.date.today().isoformat()}; wall time of this invocation {wall / 60:.1f} min; teacher "
        f"{teacher['wall_time_s'] / 60:.1f} min, students {min(walls) / 60:.1f}-{max(walls) / 60:.1f} min "
        f"(finished runs are reused)  ",
        f"Teacher: Lite0 fine-tuned (full, backbone 0.1 x lr) for {args.teacher_epochs} epochs: test accuracy "
        f"**{100 * teacher['metrics']['test/acc']:.1f}%**. Students: small_cnn widths {args.widths}, "
        f"{args.student_epochs} epochs of batch {args.batch_size}, all labels of the train split (split_seed 0, "
        f"70/10/20). Seeds {', '.join(map(str, args.seeds))}; test accuracy in %, mean ± sd.",
        "",
        "| student | knowledge | test acc | gain over alone |",
        "|---|---|---|---|",
    ]
    kinds = {"alone": "labels only", "response": "soft targets (Hinton et al. 2015)",
             "+ feature": "soft targets + hint (FitNets)", "+ relation": "soft targets + RKD-D/A (Park et al. 2019)",
             "relation only": "labels + RKD-D/A"}
    acc = {key: 100 * r["metrics"]["test/acc"] for key, r in results.items()}
    for kind in args.students:
        values = [acc[(kind, s)] for s in args.seeds]
        gain = ""
        if "alone" in args.students and kind != "alone":
            gain = f"{sum(v - acc[('alone', s)] for v, s in zip(values, args.seeds)) / len(values):+.1f}"
        lines.append(f"| {kind} | {kinds[kind]} | {mean_sd(values, digits=1, each=True)} | {gain} |")
    size = f"{args.image_size}px"
    write_report(out, lines, args.runs_dir, f"{size}/<student>/seed<k>/results.json`, the teacher's in `{size}/teacher")


if __name__ == "__main__":
    main()
