"""Knowledge-distillation losses as pure functions.

- Response-based (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"):
  soft targets p^T = softmax(z / T); the student matches the teacher's p^T. The gradient of the
  soft term scales as 1/T^2, hence the T^2 factor that keeps both terms on one scale (Sec. 2).
- Feature-based (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): a learned regressor r
  maps the student's guided layer to the teacher's hint layer, L_HT = 1/2 ||u_h - r(v_g)||^2 (Eq. 3).
- Relation-based (Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation"): the student matches the
  teacher's *relations* between examples of a batch, not its outputs: pairwise distances normalised by
  their mean (distance-wise, Eq. 4-5) and the angles of triplets (angle-wise, Eq. 6-7), each compared with
  the Huber loss. Embeddings of different widths can be compared, as only relations are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch ("batchmean")."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)   (Hinton et al. 2015).

    The soft term covers every row (the transfer set may include unlabeled images); the hard term the
    first len(targets) rows, the labeled ones."""
    soft = soft_target_kl(student_logits, teacher_logits, temperature)
    hard = F.cross_entropy(student_logits[: len(targets)].float(), targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def hint_loss(regressed_student: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets Eq. (3), 1/2 ||u_h(x) - r(v_g(x))||^2, averaged over elements rather than summed."""
    return 0.5 * F.mse_loss(regressed_student.float(), teacher_hint.float())


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """||e_i - e_j||_2 for every pair, (N, N)."""
    return torch.cdist(e.float(), e.float())


def distance_potential(e: torch.Tensor) -> torch.Tensor:
    """RKD Eq. (4): psi_D(t_i, t_j) = ||t_i - t_j|| / mu, mu the mean distance over the pairs i != j."""
    d = pairwise_distances(e)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diagonal].mean().clamp_min(1e-12)


def angle_potential(e: torch.Tensor) -> torch.Tensor:
    """RKD Eq. (6): psi_A(t_i, t_j, t_k) = cos of the angle at t_j = <e_ij, e_kj>, e_ij = (t_i - t_j) / ||.||;
    (N, N, N), entry [j, i, k]."""
    diff = F.normalize(e.float().unsqueeze(0) - e.float().unsqueeze(1), dim=2)  # [j, i] = t_i - t_j, unit
    return diff @ diff.transpose(1, 2)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D, Eq. (5): Huber(psi_D(student), psi_D(teacher)) averaged over the pairs."""
    return F.smooth_l1_loss(distance_potential(student), distance_potential(teacher).detach())


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A, Eq. (7): Huber(psi_A(student), psi_A(teacher)) averaged over the triplets."""
    return F.smooth_l1_loss(angle_potential(student), angle_potential(teacher).detach())
