"""Hard pseudo-labels with a confidence mask: the unlabeled term of Pseudo-Label (Lee 2013, eq. 15) and of
FixMatch (Sohn et al. 2020, eq. 4), which differ only in where the labels come from.

    loss = 1/n' sum_b 1[max q_b >= tau] CE(argmax q_b, f(x'_b))

with q = softmax of `labeling_logits` (no gradient through the labels). The mask is decided for each
example on its own, so under DDP no cross-process state is needed: each process masks its own
examples, the 1/n' mean over its own n' examples, and DDP's gradient average over processes of equal
n' gives exactly the mean over the global unlabeled batch. Only the logged statistics (the mask rate)
need the cross-process mean, which the modules take with `sync_dist`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def confident_pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax class, mask max-probability >= threshold) of `logits`, without gradient."""
    with torch.no_grad():
        confidence, pseudo = logits.detach().float().softmax(1).max(1)
    return pseudo, confidence >= threshold


def pseudo_label_loss(logits_u: torch.Tensor, threshold: float = 0.0,
                      labeling_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1/n' sum CE(y', f(x')) with y' = argmax of `labeling_logits` (default: `logits_u` itself; no
    gradient through y'); pseudo-labels whose probability is below `threshold` count as zero in the mean.
    Returns (loss, pseudo-labels, accepted mask)."""
    pseudo, accepted = confident_pseudo_labels(logits_u if labeling_logits is None else labeling_logits, threshold)
    per_example = F.cross_entropy(logits_u.float(), pseudo, reduction="none")
    return (per_example * accepted).mean(), pseudo, accepted


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher's consistency cost (Tarvainen & Valpola 2017, eq. 1): the squared distance between the
    class probabilities of student and teacher, averaged over examples and classes; no gradient to the teacher."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))
