"""Test-time augmentation: the views of an image a model is run on, and their logits.

`flip` adds the mirrored image; `multiscale` runs mmsegmentation's ratios 0.5-1.75 of the profile's size (each
resized from the original image), each with its mirror. The views are merged at the label's size as
mmsegmentation merges them, the mean of their softmax probabilities (`scoring.scores_at`); a single view is scored
from its logits directly (the same argmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from training.data.dataset import val_transform
from training.profiles import Profile

TTA_MODES = ("none", "flip", "multiscale")
MULTISCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmsegmentation's Cityscapes test-time scales


class MultiScaleViews:
    """The image at each of `ratios` x the profile's size, each resized from the original, uint8 (at ratio 1.0
    exactly what `val_transform` gives; `to_model_input` normalises them on the device)."""

    def __init__(self, profile: Profile, ratios: Sequence[float] = MULTISCALE_RATIOS):
        height, width = profile.image_hw
        self.transforms = [v2.Resize((int(height * r + 0.5), int(width * r + 0.5)), antialias=True) for r in ratios]

    def __call__(self, image):
        return tuple(transform(image) for transform in self.transforms)


def tta_transform(profile: Profile, tta: str):
    """The dataset transform of a TTA mode: the validation transform, or the multi-scale views."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: expected one of {TTA_MODES}")
    return MultiScaleViews(profile) if tta == "multiscale" else val_transform(profile)


def forward_views(model: nn.Module, images, tta: str = "none") -> list[torch.Tensor]:
    """The model's fp32 logits (N,C,h,w) of every view of a batch (a tensor, or a tuple of scales), mirrored ones
    flipped back."""
    scales = images if isinstance(images, tuple) else (images,)
    views = []
    for x in scales:
        views.append(model(x).float())
        if tta in ("flip", "multiscale"):
            views.append(model(x.flip(-1)).float().flip(-1))
    return views
