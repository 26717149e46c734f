"""Previews in the classes' colours (Cityscapes' by default): image | ground truth | prediction, one row per
validation image."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from training.data.dataset import PALETTE


def colorize(train_ids: torch.Tensor, palette: np.ndarray = PALETTE) -> np.ndarray:
    """HxW train ids (void 255 -> black) to an HxWx3 uint8 image in `palette`'s colours (uint8[256, 3], e.g.
    `ClassSet.palette_table()`; Cityscapes' by default)."""
    return palette[train_ids.to(torch.uint8).cpu().numpy()]


def preview_grid(
    images: torch.Tensor, targets: torch.Tensor, predictions: torch.Tensor, palette: np.ndarray = PALETTE
) -> np.ndarray:
    """uint8 images (N,3,H,W), targets and predictions (N,H,W) -> one HxWx3 array with a row per image."""
    rows = []
    for image, target, prediction in zip(images, targets, predictions):
        rgb = image.permute(1, 2, 0).cpu().numpy()
        rows.append(np.concatenate([rgb, colorize(target, palette), colorize(prediction, palette)], axis=1))
    return np.concatenate(rows, axis=0)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
