"""How pseudo-labels evolve during semi-supervised training, drawn as the course's t-SNE study does:

- background: a fixed, class-stratified sample of the unlabeled training images, coloured by their
  true (hidden) label;
- circles: the labeled anchors, coloured by their label;
- stars: a fixed sample of unlabeled images, coloured by the pseudo-label the network gives them at
  that epoch; wrong ones are crossed (x), those below the method's confidence threshold are faint.

At each epoch listed in `epochs` (0-based, after that epoch's training and validation; -1 = the last,
also when `trainer.max_steps` ends the run before `max_epochs`)
the features of the predicting network (`evaluation_features`: Mean Teacher's teacher) are embedded
with t-SNE and drawn to `<run dir>/plots/dynamics/epoch_NNN.png`; at the end of training all maps go
into one grid, `plots/dynamics_grid.png`, and the curves over every epoch (pseudo-label accuracy on the
unlabeled part, mask rate, val accuracy, alpha(t) = the weight of the unlabeled term) into
`plots/dynamics_curves.png`, with the numbers in `plots/dynamics.json`. Works with every
`SemiSupervisedMethod` (Pseudo-Label, FixMatch, Mean Teacher). Only process 0 draws (under DDP all
processes hold the same weights). The hidden labels are read here for drawing only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules.errors import ConfigError
from datamodules.splits import stratified_subset

CURVES = {  # logged name -> label in the curves plot
    "val/pseudo_acc": "pseudo-label accuracy (unlabeled)",
    "val/acc": "val accuracy",
    "train/accepted": "mask rate (pseudo-labels used)",
    "val/pseudo_accepted": "confident fraction (val pass)",
}


def _float(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class PseudoLabelDynamics(pl.Callback):
    def __init__(self, epochs=(), points: int = 750, background_points: int = 2000, labeled_points: int = 1000,
                 seed: int = 0):
        self.epochs = [int(e) for e in (epochs or [])]
        if any(e < -1 for e in self.epochs):
            raise ConfigError(f"callbacks.pseudo_label_dynamics.epochs={self.epochs}: 0-based epochs, or -1 for the last")
        if min(points, background_points, labeled_points) < 1:
            raise ConfigError("callbacks.pseudo_label_dynamics: points, background_points, labeled_points must be >= 1")
        self.points, self.background_points, self.labeled_points = points, background_points, labeled_points
        self.seed = seed
        self.history: list[dict] = []
        self.maps: dict[int, dict] = {}

    # ---- when ------------------------------------------------------------------------------------------
    def wanted(self, trainer: pl.Trainer) -> bool:
        epoch, last = trainer.current_epoch, trainer.max_epochs - 1 if trainer.max_epochs else None
        return epoch in self.epochs or (-1 in self.epochs and epoch == last)

    def on_train_epoch_start(self, trainer, pl_module):
        self._collect_train_scalars(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.epochs:
            return
        metrics = trainer.callback_metrics
        self.history.append({"epoch": trainer.current_epoch,
                             **{key: _float(metrics, key) for key in ("val/pseudo_acc", "val/acc", "val/pseudo_accepted")}})
        if self.wanted(trainer) and trainer.is_global_zero:
            self.maps[trainer.current_epoch] = self.embed(trainer, pl_module)
            self.draw_map(trainer.current_epoch, self.maps[trainer.current_epoch], self.plot_dir(trainer))

    def on_fit_end(self, trainer, pl_module):
        if not self.epochs or not trainer.is_global_zero:
            return
        self._collect_train_scalars(trainer)
        out = self.plot_dir(trainer)
        last = self.history[-1]["epoch"] if self.history else trainer.current_epoch  # max_steps may end the run early
        if -1 in self.epochs and last not in self.maps:
            self.maps[last] = self.embed(trainer, pl_module)
            self.draw_map(last, self.maps[last], out)
        if self.maps:
            self.draw_grid(out / "dynamics_grid.png")
        if self.history:
            self.draw_curves(out / "dynamics_curves.png")
            (out / "dynamics.json").write_text(json.dumps({"history": self.history, "maps": {
                e: {k: m[k] for k in ("pseudo_acc", "accepted_rate")} for e, m in self.maps.items()}}, indent=1))

    def _collect_train_scalars(self, trainer) -> None:
        """The epoch means of train/* are logged after this callback's epoch-end hook: read them one hook later."""
        if self.history and "train/alpha" not in self.history[-1]:
            for key in ("train/alpha", "train/accepted"):
                self.history[-1][key] = _float(trainer.callback_metrics, key)

    @staticmethod
    def plot_dir(trainer) -> Path:
        return Path(trainer.default_root_dir) / "plots"

    # ---- what: features of fixed samples, pseudo-labels, t-SNE -----------------------------------------
    def samples(self, dm):
        if not hasattr(self, "_samples"):
            unlabeled_y = np.asarray(dm.unlabeled.labels)
            background = stratified_subset(unlabeled_y, self.background_points, self.seed)
            rng = np.random.default_rng(self.seed)
            stars = np.sort(rng.permutation(len(background))[: self.points])  # positions within background
            labeled = stratified_subset(np.asarray(dm.labeled.labels), self.labeled_points, self.seed)
            self._samples = background, stars, labeled
        return self._samples

    @torch.no_grad()
    def features(self, pl_module, dm, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feats, logits, labels = [], [], []
        for x, y in dm.loader(dataset, train=False):
            f, lg = pl_module.evaluation_features(x.to(pl_module.device))
            feats.append(f.float().cpu()), logits.append(lg.float().cpu()), labels.append(y)
        return torch.cat(feats).numpy(), torch.cat(logits).numpy(), torch.cat(labels).numpy()

    def embed(self, trainer, pl_module) -> dict:
        from .embedding_plot import embed_2d

        dm = trainer.datamodule
        background, stars, labeled = self.samples(dm)
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            fb, lb, yb = self.features(pl_module, dm, dm.unlabeled.subset(background))
            fl, _, yl = self.features(pl_module, dm, dm.labeled.subset(labeled))
        finally:
            for m, training in modes:
                m.training = training
        coords, _ = embed_2d(np.concatenate([fb, fl]), seed=self.seed, max_points=len(fb) + len(fl))
        probs = torch.from_numpy(lb[stars]).softmax(1)
        confidence, pseudo = probs.max(1)
        accepted = (confidence >= getattr(pl_module, "threshold", 0.0)).numpy()
        pseudo = pseudo.numpy()
        return {"background": coords[: len(fb)], "background_y": yb, "labeled": coords[len(fb):], "labeled_y": yl,
                "stars": coords[: len(fb)][stars], "stars_y": yb[stars], "pseudo": pseudo, "accepted": accepted,
                "pseudo_acc": float((pseudo == yb[stars]).mean()), "accepted_rate": float(accepted.mean()),
                "num_classes": int(lb.shape[1])}

    # ---- drawing -----------------------------------------------------------------------------------------
    @staticmethod
    def draw_panel(ax, m: dict, title: str) -> None:
        import matplotlib.pyplot as plt

        cmap = plt.get_cmap("tab10" if m["num_classes"] <= 10 else "tab20")
        norm = dict(cmap=cmap, vmin=0, vmax=max(9, m["num_classes"] - 1))
        ax.scatter(*m["background"].T, c=m["background_y"], s=28, alpha=0.12, linewidths=0, **norm)
        ax.scatter(*m["labeled"].T, c=m["labeled_y"], s=22, marker="o", edgecolors="black", linewidths=0.6, **norm,
                   label="labeled (circle)")
        wrong = m["pseudo"] != m["stars_y"]
        faint = ~m["accepted"]
        for sel, alpha in ((faint, 0.35), (~faint, 1.0)):
            ax.scatter(*m["stars"][sel].T, c=m["pseudo"][sel], s=40, marker="*", alpha=alpha, linewidths=0, **norm)
            ax.scatter(*m["stars"][sel & wrong].T, c="black", s=10, marker="x", alpha=alpha, linewidths=0.7)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(title, fontsize=9)

    def title(self, epoch: int, m: dict) -> str:
        return (f"epoch {epoch}: pseudo-label acc {100 * m['pseudo_acc']:.1f}%"
                + (f", {100 * m['accepted_rate']:.0f}% confident" if m["accepted_rate"] < 1 else ""))

    def draw_map(self, epoch: int, m: dict, out: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        self.draw_panel(ax, m, self.title(epoch, m) + "\nbackground: true label; o labeled; * pseudo-label (x: wrong)")
        path = out / "dynamics" / f"epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    def draw_grid(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = sorted(self.maps)
        cols = min(4, len(epochs))
        rows = (len(epochs) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, epoch in zip(axes.flat, epochs):
            ax.axis("on")
            self.draw_panel(ax, self.maps[epoch], self.title(epoch, self.maps[epoch]))
        fig.suptitle("t-SNE of features: background = true label, o = labeled, * = pseudo-label (x: wrong)")
        fig.tight_layout()
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path

    def draw_curves(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in self.history]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in CURVES.items():
            values = [h.get(key) for h in self.history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", ms=3, label=label)
        ax.set_xlabel("epoch"), ax.set_ylabel("accuracy / fraction"), ax.set_ylim(0, 1.02)
        alphas = [h.get("train/alpha") for h in self.history]
        if any(a is not None for a in alphas):
            right = ax.twinx()
            right.plot(epochs, [np.nan if a is None else a for a in alphas], color="black", ls="--", label="alpha(t)")
            right.set_ylabel("alpha(t): weight of the unlabeled term")
            right.set_ylim(0, 1.1 * max([a for a in alphas if a is not None] + [1e-3]))
            right.legend(loc="lower right")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
