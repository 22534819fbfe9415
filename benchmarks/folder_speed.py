"""Speed on image folders, as a user measures it: whole-process wall time at the machine's default threads.

    python benchmarks/folder_speed.py                 # 3 alternating runs of each arm, table to results/
    python benchmarks/folder_speed.py --repeats 1

DANN, MNIST -> USPS (ADDA protocol sizes: 2,000 MNIST and 1,800 USPS images written as PNG folders from
../shared/data), 1,000 steps of batch 64, training only (`model.tsne=false trainer.limit_val_batches=0
test=false`). Arms, each a separate process:
  project, data.cache=none   the per-step reading of files (every image decoded at every step)
  project, data.cache=disk   first run (decodes the folders once, writes the cache) and second run (cache warm)
  project, start-up only     the same command with train=false (imports, config, decoding, module, Trainer)
  bare loop                  this file with --bare: PIL reads the folders into one tensor, then the same LeNet,
                             domain classifier, losses, Adam and schedule for the same steps, no Lightning
Peak memory (max RSS of the process) beside each. The table goes to benchmarks/results/folder_speed.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "outputs" / "benchmarks" / "folder_speed"
DATA = WORK / "data"
RESULTS = ROOT / "benchmarks" / "results"
STEPS, BATCH = 1000, 64
TRAIN_ONLY = ["model.tsne=false", "trainer.limit_val_batches=0", "test=false"]


def write_folders() -> dict[str, Path]:
    """2,000 MNIST and 1,800 USPS images as <class>/<i>.png (written once)."""
    import numpy as np
    from PIL import Image

    folders = {"mnist": (SHARED / "mnist_test.npz", 2000), "usps": (SHARED / "usps_train.npz", 1800)}
    out = {}
    for name, (npz, count) in folders.items():
        root = out[name] = DATA / name
        if root.is_dir():
            continue
        with np.load(npz, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
        pick = np.random.default_rng(0).permutation(len(labels))[:count]
        for i in pick:
            (root / str(int(labels[i]))).mkdir(parents=True, exist_ok=True)
            image = images[i].squeeze()
            image = (image * 255).round().astype(np.uint8) if image.dtype != np.uint8 else image
            Image.fromarray(image).save(root / str(int(labels[i])) / f"{i:05d}.png")
    return out


def project_command(folders: dict, cache: str, run_dir: Path, *extra: str) -> list[str]:
    return ["run.py", "experiment=mnist_usps", "model=dann", "data=pair",
            "data.source.name=imagefolder", f"data.source.root={folders['mnist']}",
            "data.target.name=imagefolder", f"data.target.root={folders['usps']}",
            f"data.batch_size={BATCH}", "data.steps_per_epoch=50", f"trainer.max_epochs={STEPS // 50}",
            f"data.cache={cache}", f"data.cache_dir={WORK / 'cache'}", *TRAIN_ONLY, *extra,
            "callbacks.progress_bar=null", "overwrite=true", f"hydra.run.dir={run_dir}"]


def timed(args: list[str]) -> dict:
    """Wall seconds and peak RSS (MB, this child alone: os.wait4's rusage) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {shlex.join(args)}\n{err.read()[-2000:]}")
        return {"wall_s": wall, "stdout": out.read(), "maxrss_mb": usage.ru_maxrss / 1024}


def bare_loop(source: Path, target: Path) -> None:
    """The plain loop: read both folders with PIL into one tensor each, then DANN for STEPS steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.domain import domain_classifier, grad_reverse
    from lightning_modules.components.schedules import adaptation_weight, annealed_lr_factor

    def read(root: Path):
        files = sorted(root.glob("*/*.png"))
        x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L")) for f in files]))[:, None].float()
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return x.round().clamp(0, 255).div(127.5).sub(1), torch.tensor([int(f.parent.name) for f in files])

    started = time.perf_counter()
    (xs, ys), (xt, _) = read(source), read(target)
    read_s = time.perf_counter() - started
    torch.manual_seed(0)
    backbone = create_backbone("lenet", in_chans=1)
    classifier = torch.nn.Linear(backbone.num_features, 10)
    critic = domain_classifier(backbone.num_features, 500, 2)
    params = [*backbone.parameters(), *classifier.parameters(), *critic.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: annealed_lr_factor(s / STEPS))
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(STEPS):
        i, j = torch.randint(len(ys), (BATCH,), generator=g), torch.randint(len(xt), (BATCH,), generator=g)
        f = backbone(torch.cat([xs[i], xt[j]]))
        d = torch.cat([f.new_zeros(BATCH), f.new_ones(BATCH)])
        d_logits = critic(grad_reverse(f, adaptation_weight(step / STEPS))).squeeze(1)
        loss = F.cross_entropy(classifier(f[:BATCH]), ys[i]) + F.binary_cross_entropy_with_logits(d_logits, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    print(json.dumps({"read_s": read_s, "train_s": time.perf_counter() - started, "steps": STEPS}))


def measure(repeats: int) -> dict:
    folders = write_folders()
    arms = {
        "project, data.cache=none": lambda r: project_command(folders, "none", WORK / f"none_{r}"),
        "project, data.cache=disk, first run": lambda r: project_command(folders, "disk", WORK / f"disk_{r}"),
        "project, data.cache=disk, second run": lambda r: project_command(folders, "disk", WORK / f"disk_{r}"),
        "project, start-up only (train=false)": lambda r: project_command(folders, "disk", WORK / f"start_{r}", "train=false"),
        "bare loop": lambda r: [str(Path(__file__).relative_to(ROOT)), "--bare", str(folders["mnist"]), str(folders["usps"])],
    }
    rows: dict = {name: [] for name in arms}
    for r in range(repeats):  # alternating, so drift in the machine's load hits every arm alike
        for name, make in arms.items():
            if name.endswith("first run"):
                subprocess.run(["rm", "-rf", str(WORK / "cache")], check=True)
            args = make(r)
            row = timed(args)
            row["command"] = "python " + shlex.join(a.replace(f"{ROOT}/", "") for a in args)
            if name == "bare loop":
                row.update(json.loads(row.pop("stdout").strip().splitlines()[-1]))
            else:
                row.pop("stdout")
            rows[name].append(row)
            print(f"{name:40s} {row['wall_s']:7.1f} s", flush=True)
    return rows


def report(rows: dict, machine: str) -> str:
    bare = statistics.median(r["wall_s"] for r in rows["bare loop"])
    lines = ["# Speed on image folders (whole process, default threads)", "",
             f"DANN MNIST -> USPS from PNG folders (2,000 / 1,800 images), {STEPS} steps of batch {BATCH}, training only. "
             f"Machine: {machine}. Median of {len(rows['bare loop'])} alternating runs; generated by "
             "`python benchmarks/folder_speed.py`.", "",
             "| arm | wall s (median) | vs bare loop | runs | peak RSS MB |", "|---|---|---|---|---|"]
    for name, rs in rows.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        lines.append(f"| {name} | {wall:.1f} | {wall / bare:.2f}x | {runs} | "
                     f"{max(r['maxrss_mb'] for r in rs):.0f} |")
    b = rows["bare loop"]
    bare_train = statistics.median(r["train_s"] for r in b)
    start = statistics.median(r["wall_s"] for r in rows["project, start-up only (train=false)"])
    warm = statistics.median(r["wall_s"] for r in rows["project, data.cache=disk, second run"])
    lines += ["", f"Bare loop: reading the folders {statistics.median(r['read_s'] for r in b):.1f} s, "
              f"{STEPS} training steps {bare_train:.1f} s ({STEPS / bare_train:.1f} steps/s). Project, cache warm: "
              f"training = wall - start-up = {warm - start:.1f} s ({STEPS / (warm - start):.1f} steps/s, "
              f"{bare_train / (warm - start):.2f}x the bare loop's rate).", "", "Commands:", ""]
    lines += [f"    {rs[0]['command']}" for rs in rows.values()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", nargs=2, type=Path, metavar=("SOURCE", "TARGET"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    args = parser.parse_args()
    if args.bare:
        sys.path.insert(0, str(ROOT))
        return bare_loop(*args.bare)
    rows = measure(args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "folder_speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = report(rows, args.machine)
    (RESULTS / "folder_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
