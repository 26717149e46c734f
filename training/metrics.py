"""Segmentation metrics from a confusion matrix: per-class IoU and Dice, their means, pixel accuracy.

Rows of the matrix are the ground-truth class, columns the predicted class. The matrix is an int64 tensor kept
on the device of the tensors it is updated with, so that a validation loop never copies predictions to the host;
`all_reduce()` sums it over the processes of a distributed run before `compute()`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # `device`: where the matrix lives before any update (what all_reduce needs where a process has no data)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of `pred` against `target` (integer tensors of the same shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        n = self.num_classes
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(device=pred.device, dtype=torch.long)
        # void pixels (and any label outside the classes) are skipped; a prediction outside the classes
        # would land in another class's bin, so it is skipped as well
        keep = (target != self.ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        counts = torch.bincount(n * target[keep] + pred[keep], minlength=n * n).reshape(n, n)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def all_reduce(self) -> None:
        """Sum the matrix over all processes; a no-op outside a distributed run."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diag()
        gt = m.sum(dim=1)
        predicted = m.sum(dim=0)
        union = gt + predicted - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        dice = torch.where(gt + predicted > 0, 2 * tp / (gt + predicted).clamp(min=1), nan)
        total = m.sum().item()
        return {
            "iou": iou.tolist(),
            "miou": _nanmean(iou),
            "dice": dice.tolist(),
            "mean_dice": _nanmean(dice),
            "pixel_accuracy": tp.sum().item() / total if total > 0 else float("nan"),
        }


def _nanmean(values: torch.Tensor) -> float:
    known = values[~values.isnan()]
    return known.mean().item() if known.numel() else float("nan")


def format_iou_table(iou, class_names) -> str:
    """A per-class table for the logs: one line per class with its IoU in percent ('n/a' when undefined)."""
    iou, class_names = list(iou), list(class_names)
    if len(iou) != len(class_names):
        raise ValueError(f"{len(iou)} IoU values for {len(class_names)} class names")
    width = max([len("class")] + [len(str(name)) for name in class_names])
    lines = [f"{'class':<{width}}  IoU (%)"]
    for name, value in zip(class_names, iou):
        shown = "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"
        lines.append(f"{str(name):<{width}}  {shown:>7}")
    return "\n".join(lines)
