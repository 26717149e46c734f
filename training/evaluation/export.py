"""Writing predictions: Cityscapes label-id PNGs for the benchmark, class-index PNGs, and colour overlays.

- `PredictionExport` writes what the benchmark's server and `cityscapesscripts` read: one 8-bit single-channel PNG
  of Cityscapes *label ids* (not train ids) per image, at the image's own resolution, named after the image
  (`<city>_<seq>_<frame>_leftImg8bit.png` under `<dir>/<city>/`); optionally colour overlays for looking at.
- `ClassIndexExport` writes predict.py's `--input` predictions: `<dir>/<name>.png` holding the class indices
  (0..classes-1, the model's own classes; void is never predicted) and `<name>_overlay.jpg` beside or in another
  folder.
- `VideoOverlay` writes the annotated video of a video input: every frame blended with its predicted classes'
  colours, encoded with PyAV (H.264 where the FFmpeg build has libx264, else MPEG-4 Part 2) at the input's frame
  rate, in an MP4 file.
Every file is written through a temporary file and a rename: a reader never sees a half-written prediction.
"""

from __future__ import annotations

import os
from fractions import Fraction
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


VIDEO_CODECS = ("libx264", "mpeg4")  # H.264 where FFmpeg has it (PyPI's PyAV wheels do), else MPEG-4 Part 2
DEFAULT_FPS = Fraction(25)  # a video that does not state its frame rate


class VideoOverlay:
    """The annotated video `path` (.mp4): each frame blended 50/50 with its predicted classes' colours, at `fps`.
    Frames go to a temporary file beside `path`, renamed to it by `close()` (`discard()` removes it instead).
    4:2:0 video needs an even width and height: an odd frame is padded by repeating its last row or column."""

    def __init__(self, path: str | Path, palette: np.ndarray, fps: Fraction | None, av):
        self.path, self.palette, self.av = Path(path), palette, av
        self.fps = Fraction(fps) if fps else DEFAULT_FPS
        self.codec = next(c for c in VIDEO_CODECS if c in av.codec.codecs_available or c == VIDEO_CODECS[-1])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = None
        self.written = 0

    def _start(self, height: int, width: int) -> None:
        self.stream = self.container.add_stream(self.codec, rate=self.fps)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame: Frame, prediction: torch.Tensor) -> None:
        image = frame.image.permute(1, 2, 0).numpy()
        blended = overlay(image, prediction.to(torch.uint8).cpu().numpy(), palette=self.palette)
        height, width = blended.shape[:2]
        if self.stream is None:
            self._start(height, width)
        pad = ((0, self.stream.height - height), (0, self.stream.width - width), (0, 0))
        if any(p[1] for p in pad):
            blended = np.pad(blended, pad, mode="edge")
        video_frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(blended), format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)
        self.written += 1

    def close(self) -> None:
        """Flush the encoder, close the file and put it in place."""
        try:
            if self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Leave no partial file behind (the prediction failed or was interrupted)."""
        try:
            self.container.close()
        except Exception:  # a broken encoder must not hide the error that stopped the prediction
            pass
        self.tmp.unlink(missing_ok=True)
