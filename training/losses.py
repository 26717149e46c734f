"""Losses of the training scripts: cross-entropy, a soft Dice loss, and knowledge distillation (per-pixel KL,
channel-wise distillation (CWD) or DIST).

Distillation: the original project computed the teacher/student term with
`F.kl_div(log_q_student, q_teacher, reduction='batchmean')` on (B, C, H, W) maps. 'batchmean' divides by the
batch size only, so the KL was summed over every pixel: the term was about 1e5 times the cross-entropy at the
usual patch sizes and grew with the resolution of each curriculum stage, which swamped the label term whatever
the weight alpha. Here the KL is averaged over the pixels (summed over the classes only), so it is on the scale
of the cross-entropy and does not depend on the resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the non-void pixels, computed in float32."""
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in `target`; logits (B, C, H, W), target (B, H, W)."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    p = logits.float().softmax(dim=1) * valid
    t = F.one_hot(torch.where(valid.squeeze(1), target, 0), num_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    t_sum = t.sum(dims)
    dice = (2 * (p * t).sum(dims) + EPS) / (p.sum(dims) + t_sum + EPS)
    present = (t_sum > 0).float()
    num_present = present.sum()
    # no valid pixel: no class present, and the loss is 0 with the graph kept (no host sync needed)
    return (num_present > 0).float() * (1 - (dice * present).sum() / num_present.clamp(min=1))


KD_LOSSES = ("kl", "cwd", "dist")


def kd_part_name(kd_loss: str) -> str:
    """The logged name of the distillation term: train_kd_loss for the per-pixel KL (as before), train_cwd_loss,
    train_dist_loss."""
    return "train_kd_loss" if kd_loss == "kl" else f"train_{kd_loss}_loss"


def _teacher_like(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's logits detached, in float32, resized bilinearly to the student's spatial size if it differs."""
    teacher = teacher_logits.detach().float()
    if teacher.shape[-2:] != student_logits.shape[-2:]:
        teacher = F.interpolate(teacher, size=student_logits.shape[-2:], mode="bilinear", align_corners=False)
    return teacher


def _spatial_kl_mean(student: torch.Tensor, teacher: torch.Tensor, temperature: float, dim) -> torch.Tensor:
    """T^2 * mean of KL(softmax(teacher / T) || softmax(student / T)), the softmax taken over `dim`."""
    log_q_student = F.log_softmax(student / temperature, dim=dim)
    log_q_teacher = F.log_softmax(teacher / temperature, dim=dim)
    return temperature**2 * (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(dim=dim).mean()


def channel_wise_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Channel-wise distillation (CWD, Shu et al. 2021): each class channel of each image becomes a distribution
    over the H*W positions (softmax of logits / T), and the student's is pulled towards the teacher's.

    loss = T^2 * mean over (image n, class c) of sum over positions of p * (log p - log q), p the teacher's and q the
    student's distribution. Every position counts (void included, as in the per-pixel KL). The teacher is detached and
    resized bilinearly to the student's size first.
    """
    teacher = _teacher_like(teacher_logits, student_logits)
    n, c = student_logits.shape[:2]
    return _spatial_kl_mean(student_logits.float().reshape(n, c, -1), teacher.reshape(n, c, -1), temperature, dim=2)


def distillation_loss(
    student_logits,
    teacher_logits,
    target,
    temperature: float,
    alpha: float,
    ignore_index: int = 255,
    kd_loss: str = "kl",
    beta: float = 1.0,
    gamma: float = 1.0,
):
    """Return (total, ce, kd) with total = alpha * kd + (1 - alpha) * ce.

    kd_loss "kl": kd = T^2 * per-pixel mean of KL(softmax(teacher / T) || softmax(student / T)) over the classes, over
    every pixel (void included, the teacher has an opinion there too); "cwd": kd = channel_wise_distillation_loss;
    "dist": kd = dist_loss with its weights `beta` (inter-class) and `gamma` (intra-class) over the non-void pixels.
    The teacher is detached and, when its output has another spatial size, resized bilinearly to the student's.
    """
    if kd_loss == "cwd":
        kd = channel_wise_distillation_loss(student_logits, teacher_logits, temperature)
    elif kd_loss == "dist":
        kd = dist_loss(
            student_logits, teacher_logits, temperature, beta, gamma, target=target, ignore_index=ignore_index
        )
    elif kd_loss == "kl":
        kd = _spatial_kl_mean(student_logits.float(), _teacher_like(teacher_logits, student_logits), temperature, dim=1)
    else:
        raise ValueError(f"kd_loss {kd_loss!r}: expected one of {KD_LOSSES}")
    ce = cross_entropy(student_logits, target, ignore_index)
    total = alpha * kd + (1 - alpha) * ce
    return total, ce, kd


class DistillationLoss(nn.Module):
    """The loss of a distillation stage: alpha * kd + (1 - alpha) * CE (`distillation_loss`) against a frozen
    teacher that this module owns as its submodule `teacher` (training.models.build.FrozenTeacher: eval mode, no
    gradients). The stage finds the teacher here to put it on the device, in the student's memory format and AMP
    dtype. forward(logits, images, target) -> (total, {name: value}); the teacher sees the same (augmented) images.
    `beta`, `gamma`: DIST's weights (kd_loss "dist" only).
    """

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, kd_loss: str = "kl", beta=1.0, gamma=1.0):
        super().__init__()
        self.teacher = teacher
        self.temperature, self.alpha, self.kd_loss = temperature, alpha, kd_loss
        self.beta, self.gamma = beta, gamma

    def forward(self, logits: torch.Tensor, images: torch.Tensor, target: torch.Tensor):
        total, ce, kd = distillation_loss(
            logits,
            self.teacher(images),
            target,
            self.temperature,
            self.alpha,
            kd_loss=self.kd_loss,
            beta=self.beta,
            gamma=self.gamma,
        )
        return total, {"train_total_loss": total, "train_ce_loss": ce, kd_part_name(self.kd_loss): kd}


def _masked_pearson(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, dim: int, eps: float = 1e-8):
    """Pearson correlation of `a` and `b` along `dim`, counting only the entries where `weight` is 1."""
    count = weight.sum(dim=dim, keepdim=True).clamp(min=1)
    a = (a - (a * weight).sum(dim=dim, keepdim=True) / count) * weight
    b = (b - (b * weight).sum(dim=dim, keepdim=True) / count) * weight
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    target: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher") on segmentation logits.

    The batch's pixels become rows of class probabilities, q = softmax(logits / T) over the C classes (void pixels'
    rows left out when `target` is given). inter = mean over rows of 1 - Pearson(q_s, q_t) across the classes of a
    pixel (does the student rank the classes of each pixel as the teacher does?); intra = mean over classes of
    1 - Pearson across the rows (does it rank the pixels of each class as the teacher does?).
    loss = T^2 (beta inter + gamma intra); 0 when no pixel is valid. Correlation, not equality: a student may be
    less confident than a much stronger teacher as long as it agrees on the relations. The teacher is detached and
    resized as for KL/CWD. Void rows are masked rather than dropped, so the step needs no host sync.
    """
    teacher = _teacher_like(teacher_logits, student_logits)
    c = student_logits.shape[1]
    q_s = (student_logits.float() / temperature).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    q_t = (teacher / temperature).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    if target is None:
        valid = torch.ones(q_s.shape[0], 1, device=q_s.device)
    else:
        valid = (target != ignore_index).reshape(-1, 1).float()
    rows = valid.sum()
    inter = ((1 - _masked_pearson(q_s, q_t, valid.expand_as(q_s), dim=1)) * valid[:, 0]).sum() / rows.clamp(min=1)
    intra = (1 - _masked_pearson(q_s, q_t, valid.expand_as(q_s), dim=0)).mean()
    return (rows > 0).float() * temperature**2 * (beta * inter + gamma * intra)
