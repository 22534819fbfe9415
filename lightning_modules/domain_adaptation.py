"""What every domain-adaptation method shares: the network, training progress, model selection and
the evaluation.

Network: `backbone` (feature extractor G_f) and `classifier` (label predictor G_y).
Training batches: `{"source": (xs, ys), "target": xt}` from `datamodules.pair.PairDataModule`.
Progress: `self.progress` is p = batches done / total batches in [0, 1], which the schedules follow.

Model selection (`select`), among the epochs that validate (`trainer.check_val_every_n_epoch`):
- `last`: the weights at the end of training.
- `best`: the epoch with the best score of `validator`, which uses no target label
  (`evaluation/validators.py`: `source_acc`, `entropy`, `im`, `snd`, `dev`). Every validator is computed
  and logged at each validation (`val/validator/<name>`), so one run shows how each would have chosen.
- `best_target_oracle`: the epoch with the best accuracy on the target validation split. This uses
  target labels to choose a model, which real unsupervised adaptation cannot do; it is there only
  for users who ask for it, and every result it produces says so (`test/selected_by_target`).
`upper_bound: true` also scores every validated epoch on the labeled target *test* split and reports the
epoch that accuracy would pick as `test/upper_bound_target_acc` and `test/upper_bound_epoch`: an upper
bound that no unsupervised selection can use, kept apart from `test/target_acc` (the selected weights).
The run dir's `model_selection.json` (and results.json's `model_selection`) holds each validated epoch's
validator scores and target test accuracy.

Evaluation (test):
- `test/target_acc` (headline), `test/source_acc`, per-class `test/target_acc_class/<name>`;
- open-set runs (`data.known_classes=K`: target classes beyond the source's K are "unknown", label K):
  `test/known_acc` (OS*, the mean accuracy over the known classes), `test/unknown_recall` and their harmonic
  mean `test/h_score` (Fu et al. 2020); a K-way classifier calls a target image unknown when its top
  probability is below `unknown_threshold`, a (K+1)-way one (OSBP) when it predicts class K;
- `test/domain_acc` and `test/proxy_a_distance`: a logistic-regression domain classifier trained on
  half of the source+target test features and scored on the other half; proxy A-distance
  d_A = 2 (1 - 2 err) (Ben-David et al. 2007; Ganin et al. 2016, Sec. 5.1.4);
- t-SNE maps of source and target test features, coloured by class with the domain as marker
  (o source, x target), before adaptation (`plots/tsne_before.png`: the features at the start of
  training, i.e. the initial or `model.backbone.checkpoint` encoder; ADDA: the trained source
  encoder on both domains) and after it (`plots/tsne_after.png`).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ConfigError
from datamodules.splits import stratified_subset

from .base import BaseMethod
from .components.backbones import create_backbone
from .components.bottleneck import BottleneckEncoder, pretrained_part
from .components.distributed import gather_rows
from .components.feature_cache import CachedSplits, feature_store
from .components.modes import dropout_off, eval_mode
from .components.param_groups import backbone_and_rest_groups, backbone_lr_multiplier
from .components.schedules import adaptation_weight
from .components.stages import backbone_stages, hold_frozen_parts_in_eval, stage_starts, train_last_stages
from .evaluation.validators import VALIDATORS, validator_scores

log = logging.getLogger(__name__)

SELECT_CHOICES = ("last", "best", "best_target_oracle")
DOMAINS = ("target", "source")  # dataloader_idx 0 and 1 of the pair's val/test loaders


def open_set_scores(per_class_acc: torch.Tensor) -> dict[str, float]:
    """From the K+1 per-class target accuracies (the last: unknown): OS* = mean over the K known classes,
    the unknown class's recall, and their harmonic mean, the H-score (Fu et al., ECCV 2020)."""
    known, unknown = float(per_class_acc[:-1].mean()), float(per_class_acc[-1])
    h = 2 * known * unknown / (known + unknown) if known + unknown > 0 else 0.0
    return {"known_acc": known, "unknown_recall": unknown, "h_score": h}


def domain_separability(source: np.ndarray, target: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(domain-classifier accuracy, proxy A-distance) from a linear classifier on half the features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target]).astype(np.float64)
    d = np.r_[np.zeros(len(source)), np.ones(len(target))]
    x_tr, x_te, d_tr, d_te = train_test_split(x, d, test_size=0.5, random_state=seed, stratify=d)
    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(x_tr), d_tr)
    acc = float(clf.score(scaler.transform(x_te), d_te))
    return acc, 2.0 * (1.0 - 2.0 * (1.0 - acc))


class DomainAdaptation(BaseMethod):
    """Base of every method in the family; subclasses write `training_step` like their paper."""

    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, scheduler=None,
                 scheduler_interval: str = "step", select: str = "best", validator: str = "im",
                 upper_bound: bool = True, tsne: bool = True, tsne_points: int = 300, open_set: bool = False,
                 unknown_threshold: float = 0.5, backbone_lr_mult: float | None = None,
                 trainable_stages: int | None = None, bottleneck_dim: int | None = None,
                 cache_features: bool = True):
        super().__init__(optimizer, scheduler, scheduler_interval)
        self.save_hyperparameters(logger=False)
        self.backbone_lr_mult = backbone_lr_multiplier(backbone_lr_mult, backbone)
        if select not in SELECT_CHOICES:
            raise ConfigError(f"model.select={select!r} is not a choice; choices: {list(SELECT_CHOICES)}")
        if validator not in VALIDATORS:
            raise ConfigError(f"model.validator={validator!r} is not a choice; choices: {list(VALIDATORS)}")
        self.select, self.tsne, self.tsne_points = select, tsne, tsne_points
        self.validator, self.upper_bound = validator, upper_bound
        self.selection_history: list[dict] = []  # one row per validated epoch
        self._val_outputs: dict[str, list] = {}
        self._after_plotted = False  # set when on_fit_end drew plots/tsne_after.png
        self.num_classes = num_classes
        self.open_set, self.unknown_threshold = bool(open_set), float(unknown_threshold)
        target_classes = num_classes + 1 if self.open_set else num_classes  # open set: label K = unknown
        self.backbone = create_backbone(in_chans=in_chans, **backbone)
        if bottleneck_dim is not None:
            if isinstance(bottleneck_dim, bool) or not isinstance(bottleneck_dim, int) or bottleneck_dim < 1:
                raise ConfigError(f"model.bottleneck_dim={bottleneck_dim} must be a positive width (e.g. 256) or null")
            self.backbone = BottleneckEncoder(self.backbone, int(bottleneck_dim))
        self.trainable_stages = self._freeze_early_stages(trainable_stages)
        self.cache_features = bool(cache_features)
        self.cached_splits = CachedSplits()  # both domains' splits as frozen-trunk features while fitting
        self.train()  # modules start in train mode and Lightning keeps each one's mode: frozen parts to eval now
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        # micro accuracy on both domains; K+1 outputs in an open-set run (a source photo called unknown is an error)
        self.eval_acc = nn.ModuleDict({f"{stage}_{dom}": MulticlassAccuracy(target_classes, average="micro")
                                       for stage in ("val", "test") for dom in DOMAINS})
        self.target_class_acc = MulticlassAccuracy(target_classes, average=None)
        self._best_score, self._best_state, self.selected_epoch = float("-inf"), None, None
        self._test_features: dict[str, list] = {}

    # ----------------------------------------------------------------------------------------
    # network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def _freeze_early_stages(self, trainable_stages: int | None) -> int | None:
        """`trainable_stages=N`: only the backbone's last N stages train (the cost of a pretrained backbone's
        backward pass on a CPU); 0: the backbone is a fixed feature extractor; null: all of it trains."""
        if trainable_stages is None:
            return None
        stages = backbone_stages(self.backbone)
        if not 0 <= int(trainable_stages) <= len(stages):
            raise ConfigError(f"model.trainable_stages={trainable_stages} must lie in [0, {len(stages)}] or be null "
                              f"(the whole backbone): {self.backbone.backbone_spec['name']} has {len(stages)} stages "
                              f"starting at {stage_starts(stages)}")
        train_last_stages(self.backbone, stages, int(trainable_stages))
        return int(trainable_stages)

    def train(self, mode: bool = True):
        """Frozen backbone stages keep their BatchNorm statistics (eval mode) while the rest trains; a frozen
        trunk under a bottleneck stays in eval mode altogether (dropout too: what its cached features saw)."""
        super().train(mode)
        if getattr(self, "trainable_stages", None) is not None:
            hold_frozen_parts_in_eval(self)
        return self

    def parameter_groups(self):
        """A pretrained backbone trains at `backbone_lr_mult` x lr, the new parts (classifier, domain
        classifier, decoder) at lr, as in Transfer-Learning-Library's Office-31 recipes (0.1x)."""
        return backbone_and_rest_groups(self, pretrained_part(self.backbone), self.optimizer_factory,
                                        self.backbone_lr_mult)

    def features(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Features the classifier sees for images of `domain` (ADDA: a separate target encoder)."""
        return self.backbone(x)

    def predict(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.classifier(self.features(x, domain))

    def predicted_class(self, logits: torch.Tensor, domain: str) -> torch.Tensor:
        """argmax; in an open-set run a target image is unknown (K) when a K-way classifier's top probability
        is below `unknown_threshold` (a (K+1)-way one predicts K itself)."""
        pred = logits.argmax(1)
        if self.open_set and domain == "target" and logits.shape[1] == self.num_classes:
            pred = torch.where(logits.float().softmax(1).amax(1) < self.unknown_threshold,
                               torch.full_like(pred, self.num_classes), pred)
        return pred

    # ----------------------------------------------------------------------------------------
    # training helpers

    uses_labeled_target = False  # semi-supervised DA: the method trains on batch["target_labeled"] too

    @staticmethod
    def labeled_examples(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The source batch, with the labeled target batch appended when there is one (semi-supervised DA)."""
        xs, ys = batch["source"]
        if "target_labeled" in batch:
            xl, yl = batch["target_labeled"]
            xs, ys = torch.cat([xs, xl]), torch.cat([ys, yl])
        return xs, ys

    def source_loss(self, logits: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on labeled source examples; logs train/source_loss and train/source_acc."""
        loss = F.cross_entropy(logits.float(), ys)
        self.log_train({"train/source_loss": loss}, len(ys), on_step=True)
        # an epoch mean weighted by batch size is the epoch's accuracy, at a fraction of a metric update's cost
        self.log_train({"train/source_acc": (logits.detach().argmax(1) == ys).float().mean()}, len(ys), prog_bar=True)
        return loss

    def with_all_parameters(self, loss: torch.Tensor) -> torch.Tensor:
        """DDP without find_unused_parameters needs a gradient for every parameter in each backward;
        parameters this loss does not use get an exact zero. No-op in a single process."""
        if self.trainer is None or self.trainer.world_size == 1:
            return loss
        return loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------------------------------
    # validation and model selection

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        domain = DOMAINS[dataloader_idx]
        feats = self.features(x, domain)
        logits = self.classifier(feats)
        self.eval_acc[f"val_{domain}"].update(self.predicted_class(logits, domain), y)
        # the validators' inputs: target labels are kept out of them (only val/target_acc uses them)
        self._val_outputs.setdefault(domain, []).append((feats.detach().float(), logits.detach().float(), y))

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def on_validation_epoch_end(self) -> None:
        scores = {}
        for dom in DOMAINS:
            metric = self.eval_acc[f"val_{dom}"]
            scores[dom] = float(metric.compute()) if metric.update_count else float("nan")
            self.log(f"val/{dom}_acc", scores[dom], prog_bar=True, sync_dist=False)
            metric.reset()
        outputs, self._val_outputs = self._val_outputs, {}
        if self.trainer.sanity_checking or len(outputs) < 2:
            return
        row = {"epoch": self.current_epoch, **self.score_validators(scores["source"], outputs),
               "target_val_acc": scores["target"]}
        for name in VALIDATORS:
            self.log(f"val/validator/{name}", row[name], sync_dist=False)  # identical on every process
        if self.upper_bound:
            row["target_test_acc"] = self.target_test_accuracy()
        self.selection_history.append(row)
        if self.select == "last":
            return
        score = row[self.validator] if self.select == "best" else scores["target"]
        if score > self._best_score:  # a NaN score never wins
            self._best_score, self.selected_epoch = score, self.current_epoch
            self._best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def score_validators(self, source_acc: float, outputs: dict[str, list]) -> dict[str, float]:
        """Every validator on the validation outputs of all processes (gathered, so all agree)."""
        def rows(dom, i):
            return gather_rows(torch.cat([part[i] for part in outputs[dom]])).cpu()

        return validator_scores(source_acc, rows("source", 0), rows("source", 1), rows("source", 2),
                                rows("target", 0), rows("target", 1))

    @torch.no_grad()
    def target_test_accuracy(self) -> float:
        """Accuracy on the whole labeled target test split (the upper-bound record; each process reads it all)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return float("nan")
        correct = total = 0
        for x, y in datamodule.eval_loader(datamodule.split("test", "target")):
            pred = self.predicted_class(self.predict(x.to(self.device), "target"), "target").cpu()
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(total, 1)

    @property
    def model_selection(self) -> dict:
        """What results.json records: the selection rule, its pick, and the target-test upper bound."""
        out = {"select": self.select, "validator": self.validator if self.select == "best" else None,
               "selected_epoch": self.selected_epoch, "history": self.selection_history}
        tested = [r for r in self.selection_history if np.isfinite(r.get("target_test_acc", float("nan")))]
        if tested:
            best = max(tested, key=lambda r: r["target_test_acc"])
            out["upper_bound"] = {"note": "epoch picked by target TEST accuracy: uses target labels, an upper bound only",
                                  "epoch": best["epoch"], "target_test_acc": best["target_test_acc"]}
        return out

    def on_fit_end(self) -> None:
        if self.select != "last" and self._best_state is not None:
            self.load_state_dict(self._best_state)
        if self.tsne and self.trainer.is_global_zero:
            # drawn now, in the background, so that the map overlaps the test phase
            self.plot_features("after")
            self._after_plotted = True

    def teardown(self, stage: str) -> None:
        # the test phase scores the same cached features (the frozen trunk gives the images nothing new)
        if stage == "test" and self.trainer is not None and self.trainer.datamodule is not None:
            self.cached_splits.restore(self.trainer.datamodule)

    # ----------------------------------------------------------------------------------------
    # test

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "target_labeled", None) is not None and not self.uses_labeled_target:
            raise ConfigError(f"data.target_labels_per_class is used by model=source_only (the S+T baseline) and "
                              f"model=mme; {type(self).__name__} would ignore the labeled target images")
        self._after_plotted = False
        if self.tsne and self.trainer.is_global_zero:
            self.plot_features("before")

    caches_trunk_features = True  # False for a method that trains on the images themselves (DRCN)

    def setup(self, stage: str) -> None:
        # before the optimizers: a progress-based schedule asks for the number of steps, which builds the loaders
        if stage == "fit":
            self.cache_trunk_features()

    def cache_trunk_features(self) -> None:
        """With a frozen trunk under a bottleneck (`model.bottleneck_dim=D model.trainable_stages=1`), both domains'
        train / val / test splits are served as the trunk's features, computed once, through fitting and testing
        (put back after the test). Exact: the frozen trunk is in eval mode, and no training image is augmented."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not (self.cache_features and isinstance(self.backbone, BottleneckEncoder) and self.backbone.trunk_frozen):
            return
        from datamodules.pair import PairDataModule

        reason = None
        if not self.caches_trunk_features:
            reason = f"{type(self).__name__} trains on the images themselves"
        elif not isinstance(datamodule, PairDataModule):
            reason = "the data is not a source / target pair"
        elif datamodule.train_augment is not None:
            reason = "the training images are augmented (each epoch differs)"
        if reason:
            log.info("model.cache_features: off, %s", reason)
            return
        sizes = {d: sum(len(datamodule.split(n, d) or ()) for n in ("train", "val", "test", "labeled"))
                 for d in ("source", "target")}
        log.info("model.bottleneck_dim on a frozen trunk: its features of %d source and %d target images, computed "
                 "once (or read from data.cache_dir when another run computed them)", sizes["source"], sizes["target"])
        device = self.trainer.strategy.root_device  # the module itself moves there only after setup
        with eval_mode(self.backbone.trunk.to(device)):
            for domain in ("source", "target"):  # `labeled`: the target's labeled images (semi-supervised DA)
                self.cached_splits.swap(datamodule, ("train", "val", "test", "labeled"), self.backbone.trunk, device,
                                        self.use_channels_last, domain=domain, store=feature_store(datamodule))
        self.train(self.training)  # eval_mode put the trunk back in the mode it found; re-apply the frozen parts'

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        domain = DOMAINS[dataloader_idx]
        feats = self.features(x, domain)
        pred = self.predicted_class(self.classifier(feats), domain)
        self.eval_acc[f"test_{domain}"].update(pred, y)
        if domain == "target":
            self.target_class_acc.update(pred, y)
        self._test_features.setdefault(domain, []).append((feats.detach().float(), y))

    def on_test_epoch_start(self) -> None:
        self._test_features = {}

    def on_test_epoch_end(self) -> None:
        for dom in DOMAINS:
            metric = self.eval_acc[f"test_{dom}"]
            if metric.update_count:
                self.log(f"test/{dom}_acc", metric.compute())
            metric.reset()
        if self.target_class_acc.update_count:
            per_class = self.target_class_acc.compute()
            for name, value in zip(self.class_names(), per_class):
                self.log(f"test/target_acc_class/{name}", value)
            if self.open_set:
                for key, value in open_set_scores(per_class).items():
                    self.log(f"test/{key}", value)
            self.target_class_acc.reset()
        if self.select != "last" and self.selected_epoch is not None:
            self.log("test/selected_epoch", float(self.selected_epoch))
            self.log("test/selected_by_target", float(self.select == "best_target_oracle"))
        bound = self.model_selection.get("upper_bound")
        if bound is not None:
            self.log("test/upper_bound_target_acc", bound["target_test_acc"])
            self.log("test/upper_bound_epoch", float(bound["epoch"]))
        if self.trainer.is_global_zero and self.selection_history:
            import json

            (self.run_dir() / "model_selection.json").write_text(json.dumps(self.model_selection, indent=1))
        gathered = {}
        for dom, parts in self._test_features.items():
            gathered[dom] = (gather_rows(torch.cat([f for f, _ in parts])).cpu().numpy(),
                             gather_rows(torch.cat([y for _, y in parts])).cpu().numpy())
        if len(gathered) == 2:
            acc, pad = domain_separability(gathered["source"][0], gathered["target"][0])
            self.log("test/domain_acc", acc)
            self.log("test/proxy_a_distance", pad)
            if self.tsne and self.trainer.is_global_zero and not self._after_plotted:  # a test-only run
                self.save_tsne("after", gathered)
        self._test_features = {}

    def class_names(self) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        source = getattr(datamodule, "source", None)
        names = list(source.classes) if source is not None else [str(i) for i in range(self.num_classes)]
        return names + ["unknown"] if self.open_set else names

    # ----------------------------------------------------------------------------------------
    # t-SNE

    def run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    @torch.no_grad()
    def collect_features(self, encoders: dict[str, nn.Module]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Features of `tsne_points` test images per domain (a stratified subset of the whole split), each
        domain with its encoder."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return {}
        out = {}
        with eval_mode(self):
            for dom in ("source", "target"):
                split = datamodule.split("test", dom)
                test = split.subset(stratified_subset(split.labels, self.tsne_points))
                feats, labels = [], []
                for x, y in datamodule.eval_loader(test):
                    feats.append(encoders[dom](x.to(self.device)).float().cpu())
                    labels.append(y)
                out[dom] = (torch.cat(feats).numpy(), torch.cat(labels).numpy())
        return out

    def plot_features(self, when: str, encoders: dict[str, nn.Module] | None = None) -> None:
        encoders = encoders or {dom: functools.partial(self.features, domain=dom) for dom in ("source", "target")}
        features = self.collect_features(encoders)
        if features:
            self.save_tsne(when, features)

    def save_tsne(self, when: str, features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """plots/tsne_<when>.png: colour = class, marker = domain (o source, x target); drawn in the
        background worker (the runner waits for it before declaring the run complete)."""
        from .evaluation.embedding_plot import save_tsne_plot_in_background

        parts = {}
        for dom, (f, y) in features.items():
            keep = stratified_subset(y, self.tsne_points)
            parts[dom] = (f[keep], y[keep])
        feats = np.concatenate([parts["source"][0], parts["target"][0]])
        labels = np.concatenate([parts["source"][1], parts["target"][1]])
        domains = np.r_[np.zeros(len(parts["source"][0]), int), np.ones(len(parts["target"][0]), int)]
        save_tsne_plot_in_background(
            feats, labels, self.run_dir() / "plots" / f"tsne_{when}.png", domains=domains,
            title=f"{type(self).__name__}, {when} adaptation: colour = class, o source, x target")


class DiscrepancyAdaptation(DomainAdaptation):
    """Source cross-entropy plus `trade_off` x a discrepancy between source and target activations
    of the adapted layers (`features`: the backbone output, `logits`: the classifier output).

    Subclasses define `discrepancy(source, target)` (DAN: MK-MMD^2, CORAL: the CORAL loss).
    `ramp: true` multiplies the weight by DANN's lambda_p schedule (off in both papers).
    `bottleneck: D` puts a D-unit fc + ReLU layer between the backbone and the classifier (the 256-d
    bottleneck of JAN, Long et al. 2017, in front of the classifier); layer name `bottleneck`, and it
    is then what the classifier, the evaluation and the t-SNE maps see. null (default): none.
    `adapt_dropout: false` measures the discrepancy on a second forward pass with dropout off (the
    activations the test sees); the cross-entropy keeps its dropout pass. Default true: one pass,
    the discrepancy on the same dropped-out activations as the classifier.
    `normalize: true` takes the discrepancy between L2-normalised activations (each row scaled to
    unit length), as the contrastive domain discrepancy of Kang et al. (CAN, CVPR 2019) does: the
    kernels then compare directions, so the network cannot lower the term by changing the scale of a
    few large target activations. Default false (both papers use the raw activations).
    """

    LAYERS = ("features", "bottleneck", "logits")

    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, trade_off: float = 1.0,
                 layers=("features", "logits"), ramp: bool = False, bottleneck: int | None = None,
                 adapt_dropout: bool = True, normalize: bool = False, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        unknown = sorted(set(layers) - set(self.LAYERS))
        if unknown or not layers:
            raise ConfigError(f"model.layers={list(layers)}: choose one or more of {list(self.LAYERS)}")
        if bottleneck is None and "bottleneck" in layers:
            raise ConfigError(f"model.layers={list(layers)} names `bottleneck`, but model.bottleneck is null; set a width (e.g. 256)")
        if bottleneck is not None and bottleneck < 1:
            raise ConfigError(f"model.bottleneck={bottleneck} must be a positive width or null")
        self.trade_off, self.layers, self.ramp, self.adapt_dropout = trade_off, list(layers), ramp, adapt_dropout
        self.normalize = normalize
        self.bottleneck = None
        if bottleneck is not None:
            self.bottleneck = nn.Sequential(nn.Linear(self.backbone.num_features, bottleneck), nn.ReLU())
            self.classifier = nn.Linear(bottleneck, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x, "source"))

    def features(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        f = self.backbone(x)
        return f if self.bottleneck is None else self.bottleneck(f)

    def discrepancy(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every adaptable layer's output for a batch: features, bottleneck (if any), logits."""
        f = self.backbone(x)
        out = {"features": f}
        if self.bottleneck is not None:
            f = out["bottleneck"] = self.bottleneck(f)
        out["logits"] = self.classifier(f)
        return out

    def adapted_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the adapted layers' activations) of a stacked source + target batch, with the
        `adapt_dropout` and `normalize` options applied to the adapted ones."""
        activations = self.activations(x)
        logits = activations["logits"]
        if not self.adapt_dropout:
            with dropout_off(self):
                activations = self.activations(x)
        return logits, [F.normalize(activations[k], dim=1) if self.normalize else activations[k] for k in self.layers]

    def adaptation_weight(self) -> float:
        """`trade_off`, times DANN's lambda_p schedule with `ramp`."""
        return self.trade_off * (adaptation_weight(self.progress) if self.ramp else 1.0)

    def training_step(self, batch, batch_idx):
        (xs, ys), xt = batch["source"], batch["target"]
        x, n = torch.cat([xs, xt]), len(xs)
        logits, adapted = self.adapted_activations(x)
        loss_y = self.source_loss(logits[:n], ys)
        loss_d = sum(self.discrepancy(a[:n], a[n:]) for a in adapted)
        self.log_train({"train/discrepancy": loss_d}, n, on_step=True)
        return self.check_finite(loss_y + self.adaptation_weight() * loss_d)
