"""Validators: scores that rank checkpoints of a domain-adaptation run without any target label.

Every score is "higher is better", computed on the validation splits (labeled source, unlabeled target):

- `source_acc`: accuracy on the labeled source validation split (the classic choice; blind to the shift).
- `entropy`: -mean H(p(x_t)), the negative mean prediction entropy on the target (confident predictions).
- `im`: information maximisation, H(mean_t p) - mean_t H(p): confident *and* diverse target predictions
  (the mutual information between input and prediction; Gomes et al. 2010, SHOT's objective).
- `snd`: soft neighborhood density (Saito et al., ICCV 2021, Eq. 1-3): the L2-normalised softmax outputs
  of the target, their similarity matrix without the diagonal, a row softmax at temperature tau = 0.05, and
  the mean entropy of its rows. High when target predictions form dense neighbourhoods.
- `dev`: deep embedded validation (You et al., ICML 2019), negated: the source validation loss, importance
  weighted by the density ratio w(x) = p_t(x) / p_s(x) from a domain classifier on the features, with the
  control variate of Eq. 7 that lowers its variance.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

VALIDATORS = ("source_acc", "entropy", "im", "snd", "dev")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def entropy_score(probs: torch.Tensor) -> float:
    """-1/N sum_i H(p_i)."""
    return -float(_entropy(probs).mean())


def information_maximization(probs: torch.Tensor) -> float:
    """H(1/N sum_i p_i) - 1/N sum_i H(p_i)."""
    return float(_entropy(probs.mean(0)) - _entropy(probs).mean())


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = 0.05) -> float:
    """SND (Saito et al. 2021): mean entropy of the rows of softmax(S / tau), S_ij = <p_i, p_j> / |p_i| |p_j|, j != i."""
    z = F.normalize(probs.double(), dim=1)
    n = len(z)
    if n < 2:
        return float("nan")
    sim = (z @ z.T)[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    return float(_entropy(F.softmax(sim / temperature, dim=1)).mean())


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """DEV's risk (You et al. 2019, Eq. 7): with L = w l, eta = -Cov(L, w) / Var(w),
    risk = mean(L) + eta mean(w) - eta (the control variate has mean 0, since E_s w = 1)."""
    losses, weights = np.asarray(losses, np.float64), np.asarray(weights, np.float64)
    weighted = weights * losses
    var = weights.var(ddof=1) if len(weights) > 1 else 0.0
    eta = -np.cov(weighted, weights, ddof=1)[0, 1] / var if var > 1e-12 else 0.0
    return float(weighted.mean() + eta * weights.mean() - eta)


def density_ratio(source: np.ndarray, target: np.ndarray, seed: int = 0) -> np.ndarray:
    """w(x_s) = (n_s / n_t) p(target | x_s) / p(source | x_s) for each source row, from a logistic-regression
    domain classifier on standardised features, cross-fitted (2 folds): a row's weight comes from the
    classifier trained on the other fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target]).astype(np.float64)
    d = np.r_[np.zeros(len(source)), np.ones(len(target))]
    p_target = np.empty(len(x))
    for train, held in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, d):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[train], d[train])
        p_target[held] = clf.predict_proba(x[held])[:, 1]
    p = np.clip(p_target[: len(source)], 1e-6, 1 - 1e-6)
    return len(source) / len(target) * p / (1 - p)


def deep_embedded_validation(source_features: np.ndarray, source_losses: np.ndarray,
                             target_features: np.ndarray, seed: int = 0) -> float:
    """-DEV risk: higher is better, like every validator here."""
    if len(source_features) < 4 or len(target_features) < 4:
        return float("nan")
    return -dev_risk(source_losses, density_ratio(source_features, target_features, seed))


def validator_scores(source_acc: float, source_features: torch.Tensor, source_logits: torch.Tensor,
                     source_labels: torch.Tensor, target_features: torch.Tensor, target_logits: torch.Tensor,
                     points: int = 2000) -> dict[str, float]:
    """Every validator on one checkpoint's validation outputs (no target label is passed in). SND and DEV
    use at most `points` evenly spaced rows per domain (their cost grows with N^2 and the classifier fit)."""
    def spaced(n):
        return torch.linspace(0, n - 1, min(n, points)).long()

    probs = F.softmax(target_logits.double(), dim=1)
    losses = F.cross_entropy(source_logits.double(), source_labels, reduction="none")
    s, t = spaced(len(source_features)), spaced(len(target_features))
    return {
        "source_acc": float(source_acc),
        "entropy": entropy_score(probs),
        "im": information_maximization(probs),
        "snd": soft_neighborhood_density(probs[t]),
        "dev": deep_embedded_validation(source_features[s].double().numpy(), losses[s].numpy(),
                                        target_features[t].double().numpy()),
    }
