"""Throughput: is the tool the bottleneck? (issue #9)

Parts (`--part`, default all):
  augment   SimCLR two-view augmentation at 32 px (CIFAR-shaped uint8): images/s of the on-device batched
            path (`ViewAugmenter.batch`) vs the per-sample torchvision v2 path through a DataLoader
            (num_workers 0 and 2).
  methods   for every conf/model/*.yaml: steady-state training images/s of the project (the real
            LightningModule, DataModule, callbacks and loggers built by run.py's helpers, in a Lightning
            Trainer) and of a bare PyTorch loop written here that performs the same step with the same
            nn modules, loss and optimizer on data already in memory. The first `--warmup` steps are
            not timed; a step is timed from the end of one batch to the end of the next, so data
            loading and all per-step framework work count.
  e2e       DANN MNIST->USPS with the ADDA-protocol preset (conf/experiment/mnist_usps.yaml with model=dann):
            `python run.py` wall time (start-up reported separately) vs a bare loop of the same steps.
  peers     SimCLR / MoCo steps vs lightly's building blocks, the DDPM step vs
            denoising-diffusion-pytorch's Unet + GaussianDiffusion (skipped with a message when the
            `bench` extra is not installed: pip install -e .[bench]).
  gpu       (not in `all`) SimCLR ResNet-18 / DDPM / DANN x fp32, fp16, bf16 on a CUDA GPU: images/s and peak
            memory; `--dry-run` runs it on the CPU, tiny. Called by benchmarks/gpu_check.sh.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --part all --out benchmarks/results/throughput.json

One thread (torch.set_num_threads(1)) everywhere: the machine is shared. Training steps are timed in CPU
time of the process (`CLOCK`; wall time for the GPU check), each rate is a median over the timed steps, and
each measurement is repeated `--repeats` times, project and bare loop interleaved, keeping the best.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runner import build  # noqa: E402
from runner.results import machine  # noqa: E402
from conftest import SHARED_DATA, compose  # noqa: E402  (compose conf/ exactly like `python run.py`)

METHODS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
SINGLE = ["data=npz", f"data.dataset.path={SHARED_DATA / 'mnist_test.npz'}", "data.val_fraction=0"]
PAIR = ["data=mnist_to_usps", "data.source.train_size=null", "data.target.train_size=null"]
BACKBONE = ["model.backbone.name=lenet"]
DA = PAIR + BACKBONE + ["model.tsne=false"]
# The fixed small configuration of every method: LeNet, 28 px grey MNIST / MNIST->USPS, batch 256
# (DDPM: the ddpm_mnist preset's 16 px U-Net, see the table's note).
METHOD_OVERRIDES: dict[str, list[str]] = {
    "supervised": SINGLE + BACKBONE,
    "finetune": SINGLE + BACKBONE,
    "distill": SINGLE + BACKBONE,  # + model.teacher.checkpoint (a LeNet classifier written at start)
    "simclr": SINGLE + BACKBONE,
    "moco": SINGLE + BACKBONE,
    "rotation": SINGLE + BACKBONE,
    "deepcluster": SINGLE + BACKBONE,
    "pseudolabel": SINGLE + BACKBONE + ["model.t1=0", "model.t2=1", "data.num_labels=1000"],
    "ddpm": SINGLE + ["model.input.image_size=16", "model.input.channels=1", "model.unet.base_channels=16",
                      "model.unet.channel_mults=[1,2,4]", "model.grid.every_n_epochs=0"],
    "dann": DA, "dan": DA, "coral": DA, "drcn": DA, "source_only": DA, "target_oracle": DA,
    "adda": DA + ["model.source_phase=0.05"],  # time the adversarial phase (2 optimizer steps per batch)
}


# Step clock: CPU time of this process. With one thread and data loaded in the process, a step's CPU
# time is its cost; unlike wall time it does not grow when other processes take the shared cores.
CLOCK = time.process_time


def one_thread() -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def rate(n_images: int, seconds: float) -> float:
    return n_images / seconds if seconds > 0 else float("nan")


def median_rate(ends: list[float], images_per_step: int, window: int = 2) -> float:
    """images/s from the median duration of non-overlapping windows of `window` consecutive steps (`ends`:
    CLOCK after each timed step, preceded by the last warm-up step's). The median ignores the
    steps that other processes on a shared machine slowed down; windows of 2 steps keep methods that
    alternate two kinds of step (DRCN) fair."""
    import statistics

    spans = [ends[i + window] - ends[i] for i in range(0, len(ends) - window, window)]
    if not spans:
        raise RuntimeError(f"{len(ends) - 1} timed steps: too few for the median (the epoch ran out of batches?)")
    return rate(images_per_step * window, statistics.median(spans))


# ------------------------------------------------------------------------------------------------
# part 1: augmentation


def bench_augment(batch: int = 256, batches: int = 6, repeats: int = 2) -> dict:
    from torch.utils.data import DataLoader

    from datamodules.augment import AugmentSpec, ViewAugmenter
    from datamodules.datasets import TensorImageDataset
    from datamodules.multiview import ViewsDataset

    n = batch * batches
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.zeros(n))
    aug = ViewAugmenter(AugmentSpec(), image_size=32, channels=3)  # SimCLR's CIFAR setting: no blur
    out = {"image_size": 32, "batch": batch, "images": n, "views": 2, "spec": aug.spec.__dict__ | {}}

    def batched() -> float:
        gen = torch.Generator().manual_seed(1)
        started = time.perf_counter()
        for start in range(0, n, batch):
            x = data.images[start : start + batch]
            [aug.batch(x, gen) for _ in range(2)]
        return rate(n, time.perf_counter() - started)

    def per_sample(workers: int) -> float:
        loader = DataLoader(ViewsDataset(data, aug, 2), batch_size=batch, num_workers=workers,
                            worker_init_fn=lambda _: torch.set_num_threads(1))
        started = time.perf_counter()  # worker start-up counts: it is what an epoch costs
        for _ in loader:
            pass
        return rate(n, time.perf_counter() - started)

    out["batched"] = max(batched() for _ in range(repeats))
    for workers in (0, 2):
        out[f"per_sample_w{workers}"] = max(per_sample(workers) for _ in range(repeats))
        out[f"speedup_w{workers}"] = out["batched"] / out[f"per_sample_w{workers}"]
    out["spec"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in aug.spec.__dict__.items()}
    return out


# ------------------------------------------------------------------------------------------------
# part 2: every method, project vs bare loop


def time_steps(step: Callable[[int], None], warmup: int, steps: int, batch: int) -> float:
    """Steady-state images/s of a bare loop: `warmup` untimed steps, then the median over `steps`."""
    for i in range(warmup):
        step(i)
    ends = [CLOCK()]
    for i in range(warmup, warmup + steps):
        step(i)
        ends.append(CLOCK())
    return median_rate(ends, batch)


class StepTimer(pl.Callback):
    """CLOCK at the end of every training batch; the steady-state rate skips `warmup` batches."""

    def __init__(self, warmup: int):
        self.warmup, self.ends, self.sizes = warmup, [], []
        self.first_end_wall = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done
        if not self.ends:
            self.first_end_wall = time.perf_counter()
        self.ends.append(CLOCK())
        self.sizes.append(batch_images(batch))

    def steady_rate(self) -> float:
        return median_rate(self.ends[self.warmup :], self.sizes[-1])


def batch_images(batch) -> int:
    """Training images (of the first domain / view / labeled part) in a batch."""
    if isinstance(batch, dict):
        first = batch.get("source", batch.get("labeled", batch.get("target")))
        return len(first[1]) if isinstance(first, (list, tuple)) else len(first)
    x = batch[0]
    return len(x[0]) if isinstance(x, (list, tuple)) else len(x)


def method_config(method: str, run_dir: Path, batch: int, steps: int, extra: list[str] = (),
                  base: list[str] | None = None) -> object:
    """`base`: the data/model overrides (default: the fixed small configuration of `method`)."""
    base = METHOD_OVERRIDES[method] if base is None else base
    overrides = [f"model={method}", *base, f"data.batch_size={batch}",
                 "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0",
                 "seed=0", *extra]
    if method in ("dann", "dan", "coral", "drcn", "source_only", "target_oracle", "adda"):
        overrides.append(f"data.steps_per_epoch={steps}")
    if method == "distill":
        overrides.append(f"model.teacher.checkpoint={teacher_checkpoint(run_dir.parent)}")
    return compose(*overrides, run_dir=run_dir)


def teacher_checkpoint(where: Path) -> Path:
    """A LeNet MNIST classifier's encoder.pt (random weights: only its cost matters here)."""
    from lightning_modules.components.backbones import create_backbone
    from lightning_modules.components.encoder_io import save_encoder

    path = where / "teacher" / "encoder.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        backbone = create_backbone(name="lenet", in_chans=1)
        head = torch.nn.Linear(backbone.num_features, 10)
        save_encoder(backbone, path, {"num_classes": 10, "in_chans": 1, "image_size": 28}, head=head)
    return path


def run_project(method: str, run_dir: Path, batch: int, warmup: int, steps: int, extra: list[str] = (),
                base: list[str] | None = None) -> dict:
    """The project's fit, built exactly as run.train() builds it (config, DataModule, module, loggers,
    callbacks, Trainer), with a timing callback added."""
    cfg = method_config(method, run_dir, batch, warmup + steps + 1, extra, base)
    pl.seed_everything(0, workers=True)
    started = time.perf_counter()
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule.data_info)
    timer = StepTimer(warmup)
    callbacks = build.build_all(cfg, "callbacks") + [timer]
    trainer = build.build_trainer(cfg, callbacks, build.build_all(cfg, "logger"))
    trainer.fit(module, datamodule=datamodule)
    one_thread()  # Lightning may reset the thread count
    return {"images_per_s": timer.steady_rate(), "timed_steps": len(timer.ends) - warmup - 1,
            "startup_s": timer.first_end_wall - started, "cfg": cfg}


# ---- bare loops: the same step written by hand ----------------------------------------------------


class Batches:
    """A shuffled in-memory split (float [-1, 1] images, labels) served as slices; no DataLoader."""

    def __init__(self, dataset, batch: int, seed: int = 0, uint8: bool = False):
        from datamodules.datasets import normalize

        self.x = dataset.images if uint8 else normalize(dataset.images)
        self.y = dataset.labels
        self.batch, self.g, self.pos = batch, torch.Generator().manual_seed(seed), len(self.y)
        self.perm = None

    def next(self):
        if self.pos + self.batch > len(self.y):
            self.perm, self.pos = torch.randperm(len(self.y), generator=self.g), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx], idx


def bare_step(method: str, module, datamodule, batch: int) -> Callable[[int], None]:
    """One training step of `method`, written without Lightning: forward, loss, backward, optimizer
    (and scheduler) step, with the module's own networks, loss functions and optimizer settings."""
    from datamodules.augment import all_rotations
    from lightning_modules.components.contrastive import nt_xent
    from lightning_modules.components.distillation import kd_loss
    from lightning_modules.components.domain import coral_loss, grad_reverse, mk_mmd2
    from lightning_modules.components.ema import ema_update, warmup_momentum
    from lightning_modules.components.schedules import adaptation_weight
    from lightning_modules.pseudolabel import pseudo_label_loss

    m = module
    m.train()

    def optimizer(params):
        return m.optimizer_factory(params=params)  # null options already dropped (base.optimizer_factory)

    def update(opt, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if method in ("supervised", "finetune", "distill"):
        data, opt = Batches(datamodule.splits.train, batch), optimizer(m.parameter_groups())

        def step(i):
            x, y, _ = data.next()
            logits = m.classifier(m.backbone(x))
            if method == "distill":
                with torch.no_grad():
                    teacher = m.teacher(x)
                loss = kd_loss(logits, teacher, y, m.temperature, m.alpha)
            else:
                loss = F.cross_entropy(logits, y)
            update(opt, loss)
        return step

    if method in ("simclr", "moco", "rotation", "deepcluster"):
        data = Batches(datamodule.splits.train, batch, uint8=True)
        augment, gen = datamodule.augmenter, torch.Generator().manual_seed(1)
        opt = optimizer(m.parameter_groups())
        probe = m.online.probe
        if method == "moco":
            m.resolve_bn()
        if method == "deepcluster":
            assignments = torch.randint(0, m.num_clusters, (len(data.y),))

        def step(i):
            x, y, idx = data.next()
            views = [augment.batch(x, gen) for _ in range(datamodule.n_views)]
            if method == "simclr":  # Eq. 1 on g(f(x~))
                h = m.backbone(torch.cat(views[:2]))
                z1, z2 = m.projector(h).chunk(2)
                loss, h1 = nt_xent(z1, z2, m.temperature, gather=False), h[:batch]
            elif method == "rotation":
                rotated, k = all_rotations(views[0])
                h = m.backbone(rotated)
                loss, h1 = F.cross_entropy(m.rotation_head(h), k), h[:batch]
            elif method == "moco":  # Algorithm 1 (query/key encoders, EMA, queue): the method's own code
                loss, h1 = m.pretext_step(views)
            else:  # DeepCluster: predict the cluster ids
                h1 = m.features(views[0])
                loss = F.cross_entropy(m.head(h1), assignments[idx])
            update(opt, loss + F.cross_entropy(probe(h1), y))  # + the online linear probe
        return step

    if method == "pseudolabel":
        labeled = Batches(datamodule.labeled, batch)
        unlabeled = Batches(datamodule.unlabeled, datamodule.unlabeled_batch_size, seed=1)
        opt = optimizer(m.parameter_groups())

        def step(i):
            x, y, _ = labeled.next()
            x_u, _, _ = unlabeled.next()
            labeling = m.labeling_logits(x_u) if m.pseudo_labels_from == "eval" else None  # dropout off
            logits = m.classifier(m.backbone(torch.cat([x, x_u])))
            unsup, _, _ = pseudo_label_loss(logits[len(y):], m.threshold, labeling)
            update(opt, F.cross_entropy(logits[: len(y)], y) + m.alpha_f * unsup)
        return step

    if method == "ddpm":
        data, opt = Batches(datamodule.splits.train, batch), optimizer(m.parameter_groups())

        def step(i):
            x, _, _ = data.next()
            loss = m.diffusion.training_loss(m.unet, x)  # Algorithm 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.unet.parameters(), m.grad_clip)
            opt.step()
            ema_update(m.ema, m.unet, warmup_momentum(i, m.ema_cfg["decay"], m.ema_cfg["warmup_steps"]))
        return step

    # domain adaptation: source (x, y) and unlabeled target x
    source = Batches(datamodule.source.train, batch)
    target = Batches(datamodule.target.train, batch, seed=1)
    total = 1000

    if method == "adda":  # phase 2: discriminator step (Eq. 8), then target-encoder step (Eq. 9)
        opt_t = m.adversarial_optimizer(params=m.target_encoder.parameters())
        opt_d = m.adversarial_optimizer(params=m.discriminator.parameters())
        m.backbone.eval()

        def step(i):
            xs, _, _ = source.next()
            xt, _, _ = target.next()
            with torch.no_grad():
                fs = m.backbone(xs)
            ft = m.target_encoder(xt)
            d = torch.cat([fs.new_ones(len(fs)), fs.new_zeros(len(ft))])
            update(opt_d, F.binary_cross_entropy_with_logits(m.discriminator(torch.cat([fs, ft.detach()])).squeeze(1), d))
            update(opt_t, F.binary_cross_entropy_with_logits(m.discriminator(ft).squeeze(1), fs.new_ones(len(ft))))
        return step

    opt = optimizer(m.parameter_groups())
    sched = None
    if m.scheduler_factory is not None:
        sched = m.scheduler_factory(optimizer=opt, total_steps=total)

    def step(i):
        (xs, ys, _), (xt, yt, _) = source.next(), target.next()
        if method == "dann":  # Eq. 18 through the gradient-reversal layer
            f = m.backbone(torch.cat([xs, xt]))
            d = torch.cat([f.new_zeros(len(xs)), f.new_ones(len(xt))])
            d_logits = m.domain_classifier(grad_reverse(f, m.trade_off * adaptation_weight(i / total, m.gamma)))
            loss = F.cross_entropy(m.classifier(f[: len(xs)]), ys) + F.binary_cross_entropy_with_logits(d_logits.squeeze(1), d)
        elif method in ("dan", "coral"):
            f = m.backbone(torch.cat([xs, xt]))
            logits = m.classifier(f)
            acts = {"features": f, "logits": logits}
            n = len(xs)
            disc = mk_mmd2 if method == "dan" else coral_loss
            loss = F.cross_entropy(logits[:n], ys) + m.trade_off * sum(disc(acts[k][:n], acts[k][n:]) for k in m.layers)
        elif method == "drcn":  # alternate: source classification, target reconstruction
            if i % 2 == 0:
                loss = m.trade_off * F.cross_entropy(m.classifier(m.backbone(xs)), ys)
            else:
                loss = (1 - m.trade_off) * F.mse_loss(m.decoder(m.backbone(xt)), xt)
        elif method == "target_oracle":
            loss = F.cross_entropy(m.classifier(m.backbone(xt)), yt)
        else:  # source_only
            loss = F.cross_entropy(m.classifier(m.backbone(xs)), ys)
        update(opt, loss)
        if sched is not None and m.scheduler_interval == "step":
            sched.step()
    return step


def run_bare(method: str, cfg, batch: int, warmup: int, steps: int) -> dict:
    """The bare loop on the same composed config: same DataModule splits (read once into tensors) and
    a freshly built module with the same initialisation."""
    pl.seed_everything(0, workers=True)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule.data_info)
    return {"images_per_s": time_steps(bare_step(method, module, datamodule, batch), warmup + 1, steps, batch)}


def bench_methods(methods: list[str], batch: int, warmup: int, steps: int, repeats: int, work: Path) -> dict:
    results = {}
    for method in methods:
        best: dict = {}
        for r in range(repeats):
            proj = run_project(method, work / f"{method}_{r}", batch, warmup, steps)
            bare = run_bare(method, proj.pop("cfg"), batch, warmup, steps)
            best["project"] = max(best.get("project", 0.0), proj["images_per_s"])
            best["bare"] = max(best.get("bare", 0.0), bare["images_per_s"])
            best["startup_s"] = proj["startup_s"]
        best["ratio"] = best["project"] / best["bare"]
        results[method] = best
        print(f"{method:14s} project {best['project']:8.1f} img/s  bare {best['bare']:8.1f} img/s  "
              f"ratio {best['ratio']:.3f}", flush=True)
    return results


# ------------------------------------------------------------------------------------------------
# part 3: DANN MNIST->USPS end to end


TRAIN_ONLY = ("model.tsne=false", "trainer.limit_val_batches=0", "test=false")


def bench_e2e(work: Path, max_epochs: int) -> dict:
    """`python run.py experiment=mnist_usps model=dann` (fit + test + every artefact) against a bare loop of the
    same number of steps on the same preset. Start-up = the same command with train=false test=false
    (interpreter, imports, config, data, module, Trainer, results.json)."""
    overrides = ["experiment=mnist_usps", "model=dann", f"trainer.max_epochs={max_epochs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def wall(*extra: str, run_dir: Path) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, *extra, f"hydra.run.dir={run_dir}"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    startup = wall("train=false", "test=false", run_dir=work / "e2e_startup")
    total = wall(run_dir=work / "e2e")
    # the same training without the evaluation a standard run adds (per-epoch validation of both domains,
    # test with the domain classifier, t-SNE maps before and after): what the bare loop does
    train_only = wall(*TRAIN_ONLY, run_dir=work / "e2e_train_only")
    cfg = compose(*overrides, run_dir=work / "e2e_bare")
    pl.seed_everything(0, workers=True)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule.data_info)
    batch, steps = cfg.data.batch_size, cfg.data.steps_per_epoch * max_epochs
    step = bare_step("dann", module, datamodule, batch)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    bare = time.perf_counter() - started
    return {"command": "python run.py " + " ".join(overrides), "steps": steps, "batch": batch, "wall_s": total,
            "startup_s": startup, "train_only_s": train_only, "bare_s": bare, "ratio": (total - startup) / bare,
            "ratio_train_only": (train_only - startup) / bare}


# ------------------------------------------------------------------------------------------------
# part 4: peers


def peer_available(name: str) -> bool:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        print(f"peers: {name} is not installed, skipped (pip install -e .[bench])", flush=True)
        return False
    return True




def bench_peers(batch: int, warmup: int, steps: int, repeats: int, work: Path) -> dict:
    """Step time of our SimCLR / MoCo / DDPM parts against the peers' parts: same backbone, batch and
    views (made once, so augmentation is not timed), same optimizer (Adam, the project's defaults).
    Both sides are bare loops; the project's own Lightning rate for the method is in the methods table."""
    out: dict = {}
    for method in ("simclr", "moco"):
        if not peer_available("lightly"):
            break
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        cfg = method_config(method, work / f"peer_{method}", batch, 2)
        pl.seed_everything(0, workers=True)
        datamodule = build.build_datamodule(cfg)
        ours = build.build_module(cfg, datamodule.data_info)
        ours.train()
        gen = torch.Generator().manual_seed(1)
        x = datamodule.splits.train.images[:batch]
        views = [datamodule.augmenter.batch(x, gen) for _ in range(2)]
        backbone = copy.deepcopy(ours.backbone)
        proj = cfg.model.projector
        if method == "simclr":
            head = SimCLRProjectionHead(backbone.num_features, proj.hidden_dim, proj.out_dim, batch_norm=proj.batch_norm)
            criterion = NTXentLoss(temperature=cfg.model.temperature)
            params = [*backbone.parameters(), *head.parameters()]

            def lightly_loss(i):
                z = head(backbone(torch.cat(views)))
                return criterion(*z.chunk(2))
        else:  # lightly's MoCo recipe: key encoder by update_momentum, queue in NTXentLoss's memory bank
            head = MoCoProjectionHead(backbone.num_features, proj.hidden_dim, proj.out_dim)
            key_backbone, key_head = copy.deepcopy(backbone), copy.deepcopy(head)
            deactivate_requires_grad(key_backbone), deactivate_requires_grad(key_head)
            criterion = NTXentLoss(temperature=cfg.model.temperature, memory_bank_size=(cfg.model.queue_size, proj.out_dim))
            params = [*backbone.parameters(), *head.parameters()]

            def lightly_loss(i):
                update_momentum(backbone, key_backbone, cfg.model.momentum)
                update_momentum(head, key_head, cfg.model.momentum)
                q = head(backbone(views[0]))
                with torch.no_grad():
                    k = key_head(key_backbone(views[1]))
                return criterion(q, k)
        opt_ours = ours.optimizer_factory(params=ours.pretext_parameters())
        opt_lightly = ours.optimizer_factory(params=params)

        def step(opt, loss_fn):
            def run_step(i):
                opt.zero_grad(set_to_none=True)
                loss_fn(i).backward()
                opt.step()
            return run_step

        variants = {"ours": step(opt_ours, lambda i: ours.pretext_step(views)[0]), "lightly": step(opt_lightly, lightly_loss)}
        if method == "moco":  # ours with plain BatchNorm, as lightly's recipe in one process
            ours_none = copy.deepcopy(ours)
            ours_none.bn, ours_none.bn_resolved = "none", None
            opt_none = ours.optimizer_factory(params=ours_none.pretext_parameters())
            variants["ours_bn_none"] = step(opt_none, lambda i: ours_none.pretext_step(views)[0])
        best = {name: 0.0 for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                best[name] = max(best[name], time_steps(fn, warmup, steps, batch))
        best["ratio"] = best["ours"] / best["lightly"]
        if method == "moco":
            best["ratio_bn_none"] = best["ours_bn_none"] / best["lightly"]
        out[method] = best
        print(f"peers {method}: {best}", flush=True)

    if peer_available("denoising_diffusion_pytorch"):
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet

        cfg = method_config("ddpm", work / "peer_ddpm", batch, 2)
        pl.seed_everything(0, workers=True)
        datamodule = build.build_datamodule(cfg)
        ours = build.build_module(cfg, datamodule.data_info)
        ours.train()
        size = cfg.model.input.image_size
        # their U-Net at the width whose parameter count is closest to ours (same resolution, 16 px grey)
        n_ours = sum(p.numel() for p in ours.unet.parameters())
        theirs_unet = min((Unet(dim=d, dim_mults=(1, 2, 4), channels=1) for d in (8, 12, 16)),
                          key=lambda net: abs(sum(p.numel() for p in net.parameters()) - n_ours))
        theirs = GaussianDiffusion(theirs_unet, image_size=size, timesteps=1000, objective="pred_noise",
                                   beta_schedule="linear", auto_normalize=False)
        x = datamodule.splits.train.images[:batch]
        from datamodules.datasets import normalize

        x = normalize(x)
        opt_ours = ours.optimizer_factory(params=ours.unet.parameters())
        opt_theirs = ours.optimizer_factory(params=theirs.parameters())

        def ours_step(i):
            opt_ours.zero_grad(set_to_none=True)
            ours.diffusion.training_loss(ours.unet, x).backward()
            opt_ours.step()

        def theirs_step(i):
            opt_theirs.zero_grad(set_to_none=True)
            theirs(x).backward()
            opt_theirs.step()

        best = {"ours": 0.0, "denoising_diffusion_pytorch": 0.0}
        for _ in range(repeats):
            best["ours"] = max(best["ours"], time_steps(ours_step, warmup, steps, batch))
            best["denoising_diffusion_pytorch"] = max(best["denoising_diffusion_pytorch"],
                                                      time_steps(theirs_step, warmup, steps, batch))
        best.update(ratio=best["ours"] / best["denoising_diffusion_pytorch"], params_ours=n_ours,
                    params_theirs=sum(p.numel() for p in theirs_unet.parameters()), theirs_dim=theirs_unet.init_conv.out_channels
                    if hasattr(theirs_unet, "init_conv") else None)
        out["ddpm"] = best
        print(f"peers ddpm: {best}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# part 5: GPU check (benchmarks/gpu_check.sh)


def synthetic_npz(path: Path, n: int, shape: tuple[int, ...], seed: int) -> Path:
    """Random uint8 images with 10 labels in the npz format the `npz` dataset reads."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=rng.integers(0, 256, (n, *shape), dtype=np.uint8), labels=rng.integers(0, 10, n))
    return path


def bench_gpu(work: Path, dry_run: bool, warmup: int, steps: int) -> dict:
    """SimCLR (ResNet-18, CIFAR-shaped 32 px colour), DDPM (16 px grey U-Net) and DANN (LeNet, 28 px) on
    synthetic data under fp32 / fp16 / bf16: steady-state images/s and peak GPU memory. `dry_run`: the
    same runs on the CPU in fp32 with tiny batches (checks the script, not the GPU)."""
    global CLOCK
    CLOCK = time.perf_counter  # GPU work is asynchronous: wall time, synchronised at each batch end
    if not dry_run and not torch.cuda.is_available():
        sys.exit("gpu check: no CUDA GPU is visible (torch.cuda.is_available() is False); use --dry-run on a CPU")
    n = 256 if dry_run else 4096
    cifar = synthetic_npz(work / "cifar_like.npz", n, (32, 32, 3), 0)
    digits_a = synthetic_npz(work / "digits_a.npz", n, (28, 28), 1)
    digits_b = synthetic_npz(work / "digits_b.npz", n, (28, 28), 2)
    runs = {
        "simclr_resnet18": ("simclr", 256, ["data=npz", f"data.dataset.path={cifar}", "model.backbone.name=resnet18_cifar"]),
        "ddpm": ("ddpm", 128, METHOD_OVERRIDES["ddpm"][:1] + [f"data.dataset.path={digits_a}"] + METHOD_OVERRIDES["ddpm"][3:]),
        "dann": ("dann", 256, ["data=pair", "data.source.name=npz", f"+data.source.path={digits_a}", "data.target.name=npz",
                               f"+data.target.path={digits_b}", *BACKBONE, "model.tsne=false"]),
    }
    precisions = ["fp32"] if dry_run else ["fp32", "fp16", "bf16"]
    device = ["trainer=cpu"] if dry_run else ["trainer=gpu", "trainer.benchmark=true"]
    out: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"}
    for name, (method, batch, base) in runs.items():
        batch = 8 if dry_run else batch
        for amp in precisions:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            extra = [*device, f"amp={amp}", "data.val_fraction=0"]
            result = run_project(method, work / f"gpu_{name}_{amp}", batch, warmup, steps, extra, base)
            result.pop("cfg")
            result["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            out[f"{name}/{amp}"] = result
            mem = "n/a" if result["peak_mem_mib"] is None else f"{result['peak_mem_mib']:.0f} MiB"
            print(f"{name:16s} {amp:5s} batch {batch:4d}  {result['images_per_s']:10.1f} img/s  peak memory {mem}",
                  flush=True)
    return out


def markdown(results: dict) -> str:
    """The tables of benchmarks/results/throughput.md from a results dict (or the --out JSON)."""
    lines = []
    if "augment" in results:
        a = results["augment"]
        lines += ["| path | images/s (2 views) | batched / this |", "|---|---:|---:|",
                  f"| on-device batched (`ViewAugmenter.batch`) | {a['batched']:.0f} | 1.0 |"]
        for w in (0, 2):
            lines.append(f"| per-sample torchvision v2, DataLoader num_workers={w} | {a[f'per_sample_w{w}']:.0f} | "
                         f"{a[f'speedup_w{w}']:.1f} |")
        lines.append("")
    if "methods" in results:
        lines += ["| method | project images/s | bare loop images/s | project / bare | >= 0.9 |", "|---|---:|---:|---:|:---:|"]
        for m, r in results["methods"].items():
            lines.append(f"| {m} | {r['project']:.0f} | {r['bare']:.0f} | {r['ratio']:.3f} | {'yes' if r['ratio'] >= 0.9 else 'NO'} |")
        lines.append("")
    if "e2e" in results:
        e = results["e2e"]
        lines += ["| DANN MNIST->USPS (ADDA protocol) | seconds |", "|---|---:|",
                  f"| `{e['command']}` wall time | {e['wall_s']:.1f} |", f"| start-up (same command, train=false test=false) | {e['startup_s']:.1f} |",
                  f"| bare loop, {e['steps']} steps of batch {e['batch']} | {e['bare_s']:.1f} |",
                  f"| (wall - start-up) / bare | {e['ratio']:.2f} |",
                  f"| training only (`{' '.join(TRAIN_ONLY)}`) wall time | {e['train_only_s']:.1f} |",
                  f"| (training-only wall - start-up) / bare | {e['ratio_train_only']:.2f} |", ""]
    if results.get("peers"):
        lines += ["| step | ours images/s | peer images/s | ours / peer |", "|---|---:|---:|---:|"]
        for m, r in results["peers"].items():
            peer = "denoising_diffusion_pytorch" if m == "ddpm" else "lightly"
            lines.append(f"| {m} | {r['ours']:.0f} | {r[peer]:.0f} | {r['ratio']:.2f} |")
            if m == "moco":
                lines.append(f"| moco, ours with `model.bn=none` (as lightly's recipe) | {r['ours_bn_none']:.0f} | {r[peer]:.0f} | "
                             f"{r['ratio_bn_none']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", choices=["all", "augment", "methods", "e2e", "peers", "gpu"])
    parser.add_argument("--dry-run", action="store_true", help="--part gpu: run the GPU check on the CPU, tiny")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--e2e-epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    one_thread()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    work = args.work or Path(tempfile.mkdtemp(prefix="throughput_"))
    if not (SHARED_DATA / "mnist_test.npz").is_file() and args.part in ("all", "methods", "e2e"):
        sys.exit(f"benchmarks/throughput.py needs the real data in {SHARED_DATA} (mnist_test.npz, usps_*.npz)")
    results: dict = {"machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "date": time.strftime("%Y-%m-%d")}
    if args.part in ("all", "augment"):
        results["augment"] = bench_augment(args.batch)
        print(json.dumps(results["augment"], indent=1), flush=True)
    if args.part in ("all", "methods"):
        methods = [m for m in args.methods.split(",") if m]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            sys.exit(f"--methods: unknown {unknown}; choices: {METHODS}")
        results["methods"] = bench_methods(methods, args.batch, args.warmup, args.steps, args.repeats, work)
    if args.part in ("all", "e2e"):
        results["e2e"] = bench_e2e(work, args.e2e_epochs)
        print(json.dumps(results["e2e"], indent=1), flush=True)
    if args.part in ("all", "peers"):
        results["peers"] = bench_peers(args.batch, args.warmup, args.steps, args.repeats, work)
    if args.part == "gpu":
        results["gpu"] = bench_gpu(work, args.dry_run, args.warmup, args.steps)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
