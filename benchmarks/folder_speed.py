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

More rows (`--rows simclr lite0 mnistm`), the same arms (cache cold, cache warm, bare loop), whole process,
default threads, a fixed number of steps, evaluation left at the defaults a user runs:
  simclr   SimCLR on a 10,000-image 32 px colour folder (MNIST test digits blended with photo patches,
           MNIST-M's rule: benchmarks/defaults.py), small_cnn, batch 256, SIMCLR_STEPS steps, then the
           kNN / linear-probe validation and test passes and the t-SNE plot; the bare loop reads the folder
           with PIL and runs the same encoder, projector, NT-Xent, Adam and batched views for the same steps.
  lite0    fine-tuning ImageNet EfficientNet-Lite0 (strategy full) on Office-31 webcam photos at 224 px,
           batch 32, LITE0_STEPS steps, then validation and test; the bare loop reads the 795 JPEGs with
           PIL (resized to 224) and trains the same network and head with the same two learning rates.
  mnistm   the whole `experiment=mnist_mnistm model=dann` preset on folders, before (data.cache=none: every
           image decoded at every step) and after (data.cache=auto, first and second run); no bare loop.
Project runs carry the PhaseTimer callback (lightning_modules/phase_timer.py): training steps, waiting
for data, validation, test, checkpoints, fit-loop rest, measured in the same run; start-up (imports,
decoding, model) = fit start - process start; the end (plots, results) = exit - last phase.
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
SIMCLR_STEPS, LITE0_STEPS = 10, 10
OFFICE_WEBCAM = SHARED / "office31" / "webcam"
# --gpu (benchmarks/gpu_check.sh): the project on the GPU in bf16 with channels-last weights, the bare loops alike
GPU = os.environ.get("FOLDER_SPEED_GPU") == "1"
GPU_ARGS = ["trainer=gpu", "amp=bf16", "model.channels_last=true"]
PHASE_TIMER = ["+callbacks.phase_timer._target_=lightning_modules.phase_timer.PhaseTimer"]
TRAIN_ONLY = ["model.tsne=false", "trainer.limit_val_batches=0", "test=false"]


def write_folders() -> dict[str, Path]:
    """2,000 MNIST and 1,800 USPS images as <class>/<i>.png, and all 10,000 MNIST test images (written once)."""
    import numpy as np
    from PIL import Image

    folders = {"mnist": (SHARED / "mnist_test.npz", 2000), "usps": (SHARED / "usps_train.npz", 1800),
               "mnist_all": (SHARED / "mnist_test.npz", 10_000)}
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


def write_photo_folder() -> Path:
    """10,000 MNIST test digits blended with photo patches, 28 px colour PNGs (written once)."""
    import benchmarks.defaults as defaults

    defaults.FOLDERS = DATA
    defaults.write_mnist_photo_folder()
    return DATA / "mnist_photo"


def simclr_command(folder: Path, cache: str, run_dir: Path) -> list[str]:
    return ["run.py", "model=simclr", "data=imagefolder", f"data.dataset.root={folder}", "data.image_size=32",
            "data.channels=3", "trainer.max_epochs=1", f"trainer.limit_train_batches={SIMCLR_STEPS}",
            f"data.cache={cache}", f"data.cache_dir={WORK / 'cache'}", *timer(run_dir), *(GPU_ARGS if GPU else []),
            "callbacks.progress_bar=null", "overwrite=true", f"hydra.run.dir={run_dir}"]


def lite0_command(cache: str, run_dir: Path) -> list[str]:
    return ["run.py", "model=finetune", "data=office31", f"data.dataset.root={OFFICE_WEBCAM.parent}",
            "data.dataset.domain=webcam", "model.backbone.name=tf_efficientnet_lite0",
            "model.backbone.pretrained=true", "model.strategy=full", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={LITE0_STEPS}", f"data.cache={cache}", f"data.cache_dir={WORK / 'cache'}",
            *timer(run_dir), *(GPU_ARGS if GPU else []), "callbacks.progress_bar=null", "overwrite=true",
            f"hydra.run.dir={run_dir}"]


def project_command(folders: dict, cache: str, run_dir: Path, *extra: str) -> list[str]:
    return ["run.py", "experiment=mnist_usps", "model=dann", "data=pair",
            "data.source.name=imagefolder", f"data.source.root={folders['mnist']}",
            "data.target.name=imagefolder", f"data.target.root={folders['usps']}",
            f"data.batch_size={BATCH}", "data.steps_per_epoch=50", f"trainer.max_epochs={STEPS // 50}",
            f"data.cache={cache}", f"data.cache_dir={WORK / 'cache'}", *TRAIN_ONLY, *extra, *timer(run_dir),
            *(GPU_ARGS if GPU else []), "callbacks.progress_bar=null", "overwrite=true", f"hydra.run.dir={run_dir}"]


def mnistm_command(folders: dict, cache: str, run_dir: Path) -> list[str]:
    """The MNIST -> MNIST-M DANN preset as a user runs it on folders: every default of the preset (batch 128,
    20 passes over the larger domain, validation, test, t-SNE), only the data read from PNG folders."""
    return ["run.py", "experiment=mnist_mnistm", "model=dann", "data=pair", "data.source.name=imagefolder",
            f"data.source.root={folders['mnist_all']}", "data.target.name=imagefolder",
            f"data.target.root={write_photo_folder()}", "data.image_size=28", "data.channels=3",
            f"data.cache={cache}", f"data.cache_dir={WORK / 'cache'}", *timer(run_dir), *(GPU_ARGS if GPU else []),
            "callbacks.progress_bar=null", "overwrite=true", f"hydra.run.dir={run_dir}"]


def timer(run_dir: Path) -> list[str]:
    return [*PHASE_TIMER, f"+callbacks.phase_timer.path={run_dir}/phase_times.json"]


def timed(args: list[str]) -> dict:
    """Wall seconds and peak RSS (MB, this child alone: os.wait4's rusage) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        launched = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {shlex.join(args)}\n{err.read()[-2000:]}")
        return {"wall_s": wall, "stdout": out.read(), "maxrss_mb": usage.ru_maxrss / 1024,
                "launched_at": launched, "exited_at": launched + wall}


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
    device, autocast = on_device(backbone, classifier, critic)
    xs, ys, xt = xs.to(device), ys.to(device), xt.to(device)
    params = [*backbone.parameters(), *classifier.parameters(), *critic.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: annealed_lr_factor(s / STEPS))
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(STEPS):
        i, j = torch.randint(len(ys), (BATCH,), generator=g), torch.randint(len(xt), (BATCH,), generator=g)
        with autocast:
            f = backbone(torch.cat([xs[i.to(device)], xt[j.to(device)]]))
            d = torch.cat([f.new_zeros(BATCH), f.new_ones(BATCH)]).float()
            d_logits = critic(grad_reverse(f, adaptation_weight(step / STEPS))).squeeze(1).float()
            loss = F.cross_entropy(classifier(f[:BATCH]), ys[i.to(device)]) + F.binary_cross_entropy_with_logits(d_logits, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    print(json.dumps({"read_s": read_s, "train_s": time.perf_counter() - started, "steps": STEPS}))


def on_device(*modules):
    """CPU: as they are. GPU (FOLDER_SPEED_GPU=1): modules on cuda with channels-last weights, and a bf16
    autocast context for the steps, as the project's `trainer=gpu amp=bf16 model.channels_last=true`."""
    import contextlib

    import torch

    if not GPU:
        return torch.device("cpu"), contextlib.nullcontext()
    for m in modules:
        m.to("cuda", memory_format=torch.channels_last)
    return torch.device("cuda"), torch.autocast("cuda", dtype=torch.bfloat16)


def timed_steps(loss_of, opt, steps: int) -> float:
    """Seconds of `steps` optimizer steps on `loss_of()` (the GPU synchronised at the end)."""
    import torch

    started = time.perf_counter()
    for _ in range(steps):
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if GPU:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def bare_simclr(folder: Path) -> None:
    """SimCLR's training steps with nothing around them: PIL reads the folder into one uint8 tensor,
    then the project's encoder, projector, NT-Xent and batched views for SIMCLR_STEPS steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from datamodules.augment import AugmentSpec, ViewAugmenter
    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.contrastive import nt_xent
    from lightning_modules.components.heads import ProjectionMLP

    started = time.perf_counter()
    files = sorted(folder.glob("*/*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    x = x.round().clamp(0, 255).to(torch.uint8)
    read_s = time.perf_counter() - started
    torch.manual_seed(0)
    backbone = create_backbone("small_cnn", in_chans=3)
    projector = ProjectionMLP(backbone.num_features, hidden_dim=512, out_dim=128, num_layers=2)
    views = ViewAugmenter(AugmentSpec.from_config(None), image_size=32, channels=3)
    device, autocast = on_device(backbone, projector)
    opt = torch.optim.Adam([*backbone.parameters(), *projector.parameters()], lr=1e-3, weight_decay=1e-6)
    g, gd = torch.Generator().manual_seed(0), torch.Generator(device).manual_seed(0)

    def loss_of():
        batch = x[torch.randint(len(x), (256,), generator=g)].to(device)
        with autocast:
            z1, z2 = projector(backbone(torch.cat([views.batch(batch, gd), views.batch(batch, gd)]))).chunk(2)
            return nt_xent(z1, z2, 0.2, gather=False)

    print(json.dumps({"read_s": read_s, "train_s": timed_steps(loss_of, opt, SIMCLR_STEPS), "steps": SIMCLR_STEPS}))


def bare_lite0(folder: Path) -> None:
    """Fine-tuning steps with nothing around them: PIL reads the webcam JPEGs (224 px) into one tensor,
    then ImageNet Lite0 + a linear head, Adam at 1e-3 (head) and 1e-4 (backbone), LITE0_STEPS steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from lightning_modules.components.backbones import create_backbone

    started = time.perf_counter()
    files = sorted(folder.glob("images/*/*.jpg")) or sorted(folder.glob("*/*.jpg"))
    classes = sorted({f.parent.name for f in files})
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR))
                                   for f in files])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    read_s = time.perf_counter() - started
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", in_chans=3, pretrained=True)
    head = torch.nn.Linear(backbone.num_features, len(classes))
    device, autocast = on_device(backbone, head)
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": 1e-3},
                            {"params": backbone.parameters(), "lr": 1e-4}])
    g = torch.Generator().manual_seed(0)

    def loss_of():
        i = torch.randint(len(y), (32,), generator=g)
        with autocast:
            return F.cross_entropy(head(backbone(x[i].to(device).float().div(127.5).sub(1))), y[i].to(device))

    print(json.dumps({"read_s": read_s, "train_s": timed_steps(loss_of, opt, LITE0_STEPS), "steps": LITE0_STEPS}))


def row_arms(row: str) -> dict:
    """The arms of one benchmark row: name -> (run index -> argv)."""
    if row == "dann":
        folders = write_folders()
        return {
            "project, data.cache=none": lambda r: project_command(folders, "none", WORK / f"none_{r}"),
            "project, data.cache=disk, first run": lambda r: project_command(folders, "disk", WORK / f"disk_{r}"),
            "project, data.cache=disk, second run": lambda r: project_command(folders, "disk", WORK / f"disk_{r}"),
            "project, start-up only (train=false)": lambda r: project_command(folders, "disk", WORK / f"start_{r}", "train=false"),
            "bare loop": lambda r: [str(Path(__file__).relative_to(ROOT)), "--bare", str(folders["mnist"]), str(folders["usps"])],
        }
    me = str(Path(__file__).relative_to(ROOT))
    if row == "simclr":
        folder = write_photo_folder()
        return {
            "project, first run (cache cold)": lambda r: simclr_command(folder, "disk", WORK / f"simclr_{r}"),
            "project, second run (cache warm)": lambda r: simclr_command(folder, "disk", WORK / f"simclr_{r}"),
            "bare loop": lambda r: [me, "--bare-simclr", str(folder)],
        }
    if row == "lite0":
        return {
            "project, first run (cache cold)": lambda r: lite0_command("disk", WORK / f"lite0_{r}"),
            "project, second run (cache warm)": lambda r: lite0_command("disk", WORK / f"lite0_{r}"),
            "bare loop": lambda r: [me, "--bare-lite0", str(OFFICE_WEBCAM)],
        }
    if row == "mnistm":
        folders = write_folders()
        return {
            "before: data.cache=none (per-step decoding)": lambda r: mnistm_command(folders, "none", WORK / f"mnistm_none_{r}"),
            "after: data.cache=auto, first run": lambda r: mnistm_command(folders, "auto", WORK / f"mnistm_auto_{r}"),
            "after: data.cache=auto, second run": lambda r: mnistm_command(folders, "auto", WORK / f"mnistm_auto_{r}"),
        }
    raise SystemExit(f"unknown row {row!r}; choices: dann, simclr, lite0, mnistm")


def phases(row: dict, run_dir: Path) -> dict:
    """The PhaseTimer's seconds of a project run, with start-up and the end from the process's clock."""
    path = run_dir / "phase_times.json"
    if not path.is_file():
        return {}
    t = json.loads(path.read_text())
    out = {"start-up": t["fit_start_at"] - row["launched_at"], **{k: v for k, v in t["seconds"].items()}}
    out["end (plots, results, exit)"] = row["exited_at"] - t.get("test_end_at", t.get("fit_end_at"))
    return out


def measure_row(row_name: str, repeats: int) -> dict:
    arms = row_arms(row_name)
    rows: dict = {name: [] for name in arms}
    for r in range(repeats):  # alternating, so drift in the machine's load hits every arm alike
        for name, make in arms.items():
            if "first run" in name:
                subprocess.run(["rm", "-rf", str(WORK / "cache")], check=True)
            args = make(r)
            load = os.getloadavg()[0]
            row = timed(args)
            row["load_1min_before"] = load
            row["command"] = "python " + shlex.join(a.replace(f"{ROOT}/", "") for a in args)
            if name == "bare loop":
                row.update(json.loads(row.pop("stdout").strip().splitlines()[-1]))
            else:
                row.pop("stdout")
                run_dir = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("hydra.run.dir=")), None)
                row["phases"] = phases(row, run_dir) if run_dir else {}
            rows[name].append(row)
            print(f"{row_name} {name:40s} {row['wall_s']:7.1f} s  (load {load:.1f})", flush=True)
    return rows


def arm_table(rows: dict, reference: float, against: str = "bare loop") -> list[str]:
    """One line per arm: median wall, ratio to the reference arm, every run, peak RSS."""
    lines = [f"| arm | wall s (median) | vs {against} | runs | peak RSS MB |", "|---|---|---|---|---|"]
    for name, rs in rows.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        lines.append(f"| {name} | {wall:.1f} | {wall / reference:.2f}x | {runs} | {max(r['maxrss_mb'] for r in rs):.0f} |")
    return lines


WHAT = {
    "dann": f"DANN MNIST -> USPS from PNG folders (2,000 / 1,800 images), {STEPS} steps of batch {BATCH}, training only",
    "simclr": f"SimCLR, 10,000-image 32 px colour PNG folder, batch 256, {SIMCLR_STEPS} training steps, then the "
              "default evaluation (kNN + linear probe on val and test, t-SNE plot)",
    "lite0": f"fine-tuning ImageNet EfficientNet-Lite0 (full) on Office-31 webcam (795 JPEGs) at 224 px, batch 32, "
             f"{LITE0_STEPS} training steps, then the default validation and test",
    "mnistm": "the MNIST -> MNIST-M DANN preset (`experiment=mnist_mnistm`, every default) on PNG folders: the 10,000 "
              "MNIST test digits -> the same digits blended with photo patches by MNIST-M's rule (the stand-in: "
              "../shared/data has no MNIST training set or MNIST-M), before and after decode-once",
}


def median_of(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def report_row(row: str, rows: dict, machine: str) -> str:
    """The row's table (ratios to the bare loop, or to the first arm where there is none), the bare loop's
    reading / training split, the project's training rate against the bare loop's, the phase breakdown."""
    against = "bare loop" if "bare loop" in rows else next(iter(rows))
    loads = [r["load_1min_before"] for rs in rows.values() for r in rs]
    lines = [f"## {row}: {WHAT[row]}", "",
             f"Machine: {machine}; 1-min load average before each run {min(loads):.1f}-{max(loads):.1f}. Median of "
             f"{len(rows[against])} alternating runs; `python benchmarks/folder_speed.py --rows {row}`.", "",
             *arm_table(rows, median_of(rows[against], "wall_s"), against)]
    if "bare loop" in rows:
        b = rows["bare loop"]
        read, train = median_of(b, "read_s"), median_of(b, "train_s")
        lines += ["", f"Bare loop: reading the files {read:.1f} s, training steps (batches included) {train:.1f} s "
                  f"({b[0]['steps'] / train:.2f} steps/s), the rest (imports, model) {median_of(b, 'wall_s') - train - read:.1f} s."]
        warm = [n for n in rows if "second run" in n]
        if warm and rows[warm[0]][0].get("phases"):
            project = statistics.median(r["phases"]["train_steps"] + r["phases"].get("train_data", 0.0) for r in rows[warm[0]])
            lines += [f"Project ({warm[0]}): training steps + waiting for batches {project:.1f} s "
                      f"({b[0]['steps'] / project:.2f} steps/s, **{train / project:.2f}x the bare loop's rate**)."]
    names = [n for n in rows if n != "bare loop"]
    keys = list(dict.fromkeys(k for n in names for r in rows[n] for k in r.get("phases", {})))
    if keys:
        lines += ["", "Per-phase breakdown of the project runs (PhaseTimer, same runs, median s):", "",
                  "| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for k in keys:
            vals = [statistics.median(r["phases"].get(k, 0.0) for r in rows[n]) for n in names]
            lines.append(f"| {k} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    lines += ["", "Commands:", ""] + [f"    {rs[0]['command']}" for rs in rows.values()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", nargs=2, type=Path, metavar=("SOURCE", "TARGET"))
    parser.add_argument("--bare-simclr", type=Path, metavar="FOLDER")
    parser.add_argument("--bare-lite0", type=Path, metavar="FOLDER")
    parser.add_argument("--rows", nargs="+", default=["dann"], help="dann, simclr, lite0, mnistm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--gpu", action="store_true", help="project: trainer=gpu amp=bf16 model.channels_last=true; "
                        "bare loops: cuda, bf16 autocast, channels-last (tables get a _gpu suffix)")
    args = parser.parse_args()
    global GPU
    if args.gpu:
        os.environ["FOLDER_SPEED_GPU"] = "1"  # read at import by this process's children (the bare loops)
        GPU = True
    sys.path.insert(0, str(ROOT))
    if args.bare:
        return bare_loop(*args.bare)
    if args.bare_simclr:
        return bare_simclr(args.bare_simclr)
    if args.bare_lite0:
        return bare_lite0(args.bare_lite0)
    for row in args.rows:
        rows = measure_row(row, args.repeats)
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = f"folder_speed_{row}{'_gpu' if GPU else ''}"
        (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        text = report_row(row, rows, args.machine)
        (RESULTS / f"{name}.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
