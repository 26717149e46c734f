"""Writing predictions: Cityscapes label-id PNGs for the benchmark, class-index PNGs, and colour overlays.

- `PredictionExport` writes what the benchmark's server and `cityscapesscripts` read: one 8-bit single-channel PNG
  of Cityscapes *label ids* (not train ids) per image, at the image's own resolution, named after the image
  (`<city>_<seq>_<frame>_leftImg8bit.png` under `<dir>/<city>/`); optionally colour overlays for looking at.
- `ClassIndexExport` writes predict.py's `--input` predictions: `<dir>/<name>.png` holding the class indices
  (0..classes-1, the model's own classes; void is never predicted) and `<name>_overlay.jpg` beside or in another
  folder.
Every file is written through a temporary file and a rename: a reader never sees a half-written prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.dataset import PALETTE, TRAIN_CLASSES
from training.evaluation.inputs import Frame, read_image

# train id -> Cityscapes label id, what the benchmark reads (void and unknown ids -> 0, "unlabeled")
TRAIN_ID_TO_LABEL_ID = torch.zeros(256, dtype=torch.uint8)
for _c in TRAIN_CLASSES:
    TRAIN_ID_TO_LABEL_ID[_c.train_id] = _c.id


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5, palette: np.ndarray = PALETTE) -> np.ndarray:
    """An HxWx3 uint8 image blended with the colours of its predicted classes (Cityscapes' train ids by default)."""
    colours = palette[classes].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha + 0.5).astype(np.uint8)


def save_image(array: np.ndarray, path: Path, **options) -> None:
    """Write through a temporary file and a rename: a reader never sees a half-written prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format=options.pop("format"), **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def overlay_folder(export_dir: str | Path, overlay: str | None) -> Path | None:
    """Where --overlay writes: its own value, else `<export dir>_overlay` beside the export (inside it, the official
    evaluator would find two files per image)."""
    if overlay is None:
        return None
    return Path(overlay) if overlay else Path(str(Path(export_dir)).rstrip("/") + "_overlay")


class PredictionExport:
    """Writes predictions (train ids) as label-id PNGs `<directory>/<name>` and, with `overlay_dir`, colour
    overlays `<overlay_dir>/<name stem>_overlay.jpg` of the source images."""

    def __init__(self, directory: str | Path, names: list[Path], sources: list[str], overlay_dir=None):
        self.directory, self.names, self.sources = Path(directory), list(names), list(sources)
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None
        self.written = 0

    def write(self, index: int, prediction: torch.Tensor) -> None:
        train_ids = prediction.to(torch.uint8)
        label_ids = TRAIN_ID_TO_LABEL_ID.to(train_ids.device)[train_ids.long()].cpu().numpy()
        name = self.names[index]
        save_image(label_ids, self.directory / name, format="PNG")
        if self.overlay_dir is not None:
            image = read_image(self.sources[index]).permute(1, 2, 0).numpy()
            target = self.overlay_dir / f"{name.with_suffix('')}_overlay.jpg"
            save_image(overlay(image, train_ids.cpu().numpy()), target, format="JPEG", quality=90)
        self.written += 1


class ClassIndexExport:
    """Writes a Frame's prediction as `<directory>/<name>.png` (8-bit class indices at the frame's resolution) and,
    with `overlay_dir`, `<overlay_dir>/<name>_overlay.jpg` (the frame blended with the classes' colours)."""

    def __init__(self, directory: str | Path, palette: np.ndarray, overlay_dir: str | Path | None = None):
        self.directory, self.palette = Path(directory), palette
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None
        self.written = 0

    def write(self, frame: Frame, prediction: torch.Tensor) -> None:
        classes = prediction.to(torch.uint8).cpu().numpy()
        save_image(classes, self.directory / f"{frame.name}.png", format="PNG")
        if self.overlay_dir is not None:
            image = frame.image.permute(1, 2, 0).numpy()
            blended = overlay(image, classes, palette=self.palette)
            save_image(blended, self.overlay_dir / f"{frame.name}_overlay.jpg", format="JPEG", quality=90)
        self.written += 1
