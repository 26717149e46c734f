"""Scoring as the Cityscapes benchmark does it: one scorer for the stage, the efficiency tool and predict.py.

The protocol (the benchmark's own evaluator, mmsegmentation, the papers): the network sees the image at the
profile's size; its logits are upsampled bilinearly (align_corners=False), in fp32, to the label's own resolution
(2048x1024 for Cityscapes), and the argmax there is scored against the original label. A perfect prediction at the
profile's size scores only 0.92-0.98 mIoU against the full-resolution labels (thin classes lose the most), so a
figure scored at the profile's size is not comparable with published ones. `--val-resolution profile` keeps that
older, cheaper score (labels nearest-resized to the profile's size) for quick runs; every figure says which it is.

One scorer serves `Stage.validate()` (training/engine/), `evaluate_efficiency.py` and `predict.py`, so the stage's
best mIoU, the efficiency sheet's `miou` and the official evaluator run on the exported PNGs give one number.
Upsampling and argmax run on the device, one image at a time (a 2048x1024 image's 19 fp32 score maps are 160 MB);
channels_last makes the argmax over the classes read contiguous memory (2.4x faster on a CPU, measured).
Test-time augmentation: training/evaluation/tta.py; writing predictions: training/evaluation/export.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from training.data.dataset import IGNORE_INDEX, NUM_CLASSES, val_transform
from training.data.photometric import to_model_input
from training.errors import UserError
from training.evaluation.tta import MultiScaleViews, forward_views
from training.metrics import ConfusionMatrix, format_iou_table
from training.profiles import Profile
from training.runtime import distributed

VAL_RESOLUTIONS = ("full", "profile")


def describe_scoring(val_resolution: str, profile: Profile | None = None) -> str:
    """How a figure was scored, for log lines: 'full res' (the labels' own size) or 'profile 576x288'."""
    if val_resolution == "full":
        return "full res"
    return "profile " + ("x".join(map(str, profile.image_size)) if profile is not None else "size")


def format_scores(metrics: dict, class_names: Sequence[str], what: str, how: str) -> str:
    """The per-class IoU table and one line 'what: mIoU .. | mean Dice .. | pixel accuracy .. (how)'."""
    return (
        format_iou_table(metrics["iou"], class_names)
        + f"\n{what}: mIoU {metrics['miou']:.4f} | mean Dice {metrics['mean_dice']:.4f} | pixel accuracy "
        f"{metrics['pixel_accuracy']:.4f} ({how})"
    )


def collate(batch: list) -> tuple:
    """Images stacked (a tuple of stacks for several views); labels (or sizes) kept as a list, as their sizes may
    differ from image to image."""
    images, targets = zip(*batch)
    if isinstance(images[0], tuple):
        return tuple(torch.stack(view) for view in zip(*images)), list(targets)
    return torch.stack(images), list(targets)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C,h,w) logits in fp32 at `size` (bilinear, align_corners=False); unchanged when already at it."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    x = logits.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0]


def scores_at(views: list[torch.Tensor], index: int, size: tuple[int, int]) -> torch.Tensor:
    """Image `index`'s class scores (C,H,W) at `size`: its logits for one view; the mean softmax probability of
    several (mmsegmentation's merge)."""
    if len(views) == 1:
        return upsample(views[0][index], size)
    total = None
    for view in views:
        probabilities = upsample(view[index], size).softmax(0)
        total = probabilities if total is None else total.add_(probabilities)
    return total.div_(len(views))


def nearest(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A label (H,W) resized to `size` by nearest neighbour, on the CPU (previews show it beside the image)."""
    label = label.cpu()
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].to(label.dtype)


class Scorer:
    """Confusion matrix, and with `loss` the cross-entropy, of class scores at the labels' own size."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str = "cpu", loss: bool = False):
        # on the device from the start: a rank without validation images still all-reduces a device tensor (NCCL)
        self.matrix = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
        self.loss = loss
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, valid pixels

    def add(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Count one image: `scores` (C,H,W) logits at the label's size, `target` (H,W) train ids; returns the
        prediction (H,W)."""
        target = target.to(scores.device, non_blocking=True).long()
        prediction = scores.argmax(0)
        self.matrix.update(prediction, target)
        if self.loss:
            self.sums[0] += F.cross_entropy(
                scores.unsqueeze(0), target.unsqueeze(0), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            self.sums[1] += (target != IGNORE_INDEX).sum()
        return prediction

    def update(
        self, views: list[torch.Tensor], targets, keep: Callable[[int, torch.Tensor], None] | None = None
    ) -> None:
        """Score every image of a batch (`targets`: a list, or a stacked tensor), one at a time; `keep(index,
        prediction)` sees each prediction (H,W) at its label's size."""
        for index, target in enumerate(targets):
            prediction = self.add(scores_at(views, index, tuple(target.shape[-2:])), target)
            if keep is not None:
                keep(index, prediction)

    def all_reduce(self) -> None:
        self.matrix.all_reduce()
        distributed.all_reduce_sum(self.sums)

    def compute(self) -> dict:
        metrics = self.matrix.compute()
        metrics["confusion_matrix"] = self.matrix.matrix.cpu()
        if self.loss:
            metrics["valid_loss"] = float(self.sums[0] / self.sums[1].clamp(min=1))
        return metrics


@torch.inference_mode()
def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
    tta: str = "none",
    export=None,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict | None:
    """mIoU, per-class IoU, Dice and pixel accuracy of `model` over `loader` (batches from `collate`), scored at the
    labels' size and streamed through a ConfusionMatrix; None for a data set without labels. With `export` (an
    object with `write(index, prediction)`, e.g. export.PredictionExport), every prediction is written as well (the
    loader must keep the data set's order)."""
    labelled = getattr(getattr(loader, "dataset", None), "labelled", True)
    scorer = Scorer(num_classes, device)
    seen = 0
    for images, targets in progress(loader):
        views = forward_views(model, to_model_input(images, device), tta)
        keep = (
            None if export is None else (lambda index, prediction, first=seen: export.write(first + index, prediction))
        )
        if labelled:
            scorer.update(views, targets, keep)
        elif keep is not None:  # targets are the images' sizes
            for index, size in enumerate(targets):
                keep(index, scores_at(views, index, tuple(int(v) for v in size)).argmax(0))
        seen += len(targets)
    return scorer.compute() if labelled else None


def accuracy_sets(
    data_dir: str | Path,
    profile: Profile,
    tta_modes: Sequence[str],
    val_resolution: str = "full",
    dataset: str = "cityscapes",
) -> tuple[Dataset, dict]:
    """The plain validation set of `dataset` (what the deploy check uses) and the one each TTA mode is scored on
    (the multi-scale one reads the original images). `profile`: the model's (for another data set than Cityscapes,
    already scaled to its native size, as the model card records it)."""
    from training.data.dataset import CityscapesSegmentation

    if "multiscale" in tta_modes and val_resolution != "full":
        raise UserError("--tta multiscale: scores at the labels' own resolution; expected --val-resolution full")
    full = val_resolution == "full"
    plain = CityscapesSegmentation(data_dir, "val", val_transform(profile), full_labels=full, dataset=dataset)
    sets = {}
    for mode in dict.fromkeys(tta_modes):
        sets[mode] = (
            CityscapesSegmentation(data_dir, "val", MultiScaleViews(profile), full_labels=True, dataset=dataset)
            if mode == "multiscale"
            else plain
        )
    return plain, sets
