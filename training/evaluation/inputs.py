"""What the tools predict on: a Cityscapes split, a folder of photos, or predict.py's `--input` (an image, a folder
of images or a video file), read as uint8 RGB.

`ImageFiles` is a map-style data set for a DataLoader (the export of a split). `open_input` gives predict.py's
`--input` as an iterable of `Frame`s (a name for the outputs, the image), consumed once, in order: an `ImageInput`
(frames named after the files) or a `VideoInput` (decoded with PyAV, FFmpeg's Python binding; frames named
`<stem>/<frame index>`), so the prediction loop (training/evaluation/prediction.py) does not change with the source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from training.data.dataset import read_png
from training.errors import UserError
from training.profiles import Profile

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def read_image(path: str | Path) -> torch.Tensor:
    """Any PNG or JPEG as uint8 RGB 3xHxW (EXIF orientation applied, as photo viewers show it)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return read_png(str(path), ImageReadMode.RGB)
    from torchvision.io import decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}") from None
    except RuntimeError:
        raise UserError(f"cannot read image {path}: corrupt or not a PNG/JPEG file") from None


class KeepAspectResize:
    """Resize to the profile's image height, the width following the image's own aspect ratio (for photos that are
    not 2:1), still uint8 (`to_model_input` normalises it on the device)."""

    def __init__(self, profile: Profile):
        self.height = profile.image_hw[0]

    def __call__(self, image):
        height, width = image.shape[-2:]
        size = (self.height, max(1, round(self.height * width / height)))
        return v2.functional.resize(image, list(size), antialias=True)


def list_images(folder: str | Path, flag: str, exclude: Path | None = None) -> list[Path]:
    """Every PNG/JPEG under `folder` (recursively, in name order), except those under `exclude` (the tool's own
    output folder, when it lies inside the input)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such directory (expected a folder of PNG/JPEG images)")
    excluded = exclude.resolve() if exclude is not None else None
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in PHOTO_SUFFIXES
        and not (excluded is not None and p.resolve().is_relative_to(excluded))
    )
    if not paths:
        raise UserError(f"{flag} {folder}: no .png/.jpg/.jpeg files in it")
    return paths


# ------------------------------------------------------------------------------------ data sets for a DataLoader


class ImageFiles(Dataset):
    """Images without labels (Cityscapes' test split, a folder of photos): (transformed image, its (H, W))."""

    labelled = False

    def __init__(self, paths: list[Path], names: list[Path], transform: Callable):
        self.images, self.names, self.transform = [str(p) for p in paths], list(names), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image = read_image(self.images[index])
        views = self.transform(tv_tensors.Image(image))
        size = torch.tensor(image.shape[-2:])
        if isinstance(views, (tuple, list)):
            return tuple(view.as_subclass(torch.Tensor) for view in views), size
        return views.as_subclass(torch.Tensor), size


def split_images(root: str | Path, split: str, transform: Callable) -> ImageFiles:
    """Every `leftImg8bit/<split>/<city>/*_leftImg8bit.png` of a Cityscapes root, labelled or not (the test split
    has no labels; torchvision's Cityscapes loader would need gtFine/<split>/)."""
    root = Path(root)
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise UserError(
            f"--data-dir {root}: missing leftImg8bit/{split}/ (expected the Cityscapes layout "
            f"leftImg8bit/{split}/<city>/*_leftImg8bit.png)"
        )
    paths = sorted(folder.glob("*/*_leftImg8bit.png"))
    if not paths:
        raise UserError(
            f"--data-dir {root}: split '{split}' is empty (no *_leftImg8bit.png under leftImg8bit/{split}/)"
        )
    return ImageFiles(paths, [Path(p.parent.name) / p.name for p in paths], transform)


def photo_images(folder: str | Path, profile: Profile) -> ImageFiles:
    """Every PNG/JPEG under `folder` (recursively), resized to the profile's height keeping its aspect ratio;
    predictions are named after the file, with .png."""
    folder = Path(folder)
    paths = list_images(folder, "--images")
    return ImageFiles(paths, [p.relative_to(folder).with_suffix(".png") for p in paths], KeepAspectResize(profile))


def cityscapes_names(dataset) -> list[Path]:
    """`<city>/<image file name>` of every image of a Cityscapes dataset (what the benchmark expects)."""
    return [Path(Path(path).parent.name, Path(path).name) for path in dataset.images]


# ------------------------------------------------------------------------------------- predict.py --input: frames


@dataclass
class Frame:
    name: Path  # where its outputs go, relative and without suffix: 'a', 'sub/b'
    image: torch.Tensor  # uint8 RGB (3, H, W), at the input's own resolution


class ImageInput:
    """Images of a file or a folder as Frames, read one at a time in name order."""

    kind = "images"

    def __init__(self, paths: list[Path], names: list[Path], what: str):
        self.paths, self.names, self.what = list(paths), list(names), what

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for path, name in zip(self.paths, self.names):
            yield Frame(name, read_image(path))


def import_av(flag: str, path: Path):
    """PyAV (`av` on PyPI), or a UserError saying what to install."""
    try:
        import av
    except ImportError:
        raise UserError(
            f"{flag} {path}: reading and writing video needs PyAV (FFmpeg's Python binding): pip install av "
            f"(listed in requirements.txt)"
        ) from None
    return av


class VideoInput:
    """The frames of a video file (its first video stream), decoded one at a time with PyAV, as Frames named
    `<stem>/<frame index, 6 digits>`. Opened once at construction to refuse an unreadable file before anything is
    written. Rotation metadata (phone videos) is not applied: frames are predicted as stored."""

    kind = "video"

    def __init__(self, path: Path):
        self.path, self.av = path, import_av("--input", path)
        with self._open() as container:
            stream = self._stream(container)
            self.fps = stream.average_rate or stream.guessed_rate  # a Fraction; None when the file does not say
            self.size = (stream.codec_context.width, stream.codec_context.height)
            self.count = stream.frames  # 0 when the container does not record it
        rate = f" at {float(self.fps):.3g} frames/s" if self.fps else ""
        frames = f"{self.count} frames" if self.count else "frames"
        self.what = f"video {path} ({frames} of {self.size[0]}x{self.size[1]}{rate})"

    def _open(self):
        try:
            return self.av.open(str(self.path))
        except (self.av.FFmpegError, OSError) as error:
            reason = getattr(error, "strerror", None) or error
            raise UserError(f"--input {self.path}: cannot read the video ({reason}); expected a video file") from None

    def _stream(self, container):
        if not container.streams.video:
            raise UserError(f"--input {self.path}: no video stream in it (expected a video file)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg decodes with several threads
        return stream

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        with self._open() as container:
            stream = self._stream(container)
            try:
                for index, frame in enumerate(container.decode(stream)):
                    rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
                    yield Frame(Path(self.path.stem) / f"{index:06d}", torch.from_numpy(rgb).permute(2, 0, 1))
            except self.av.FFmpegError as error:
                reason = getattr(error, "strerror", None) or error
                raise UserError(f"--input {self.path}: cannot decode the video ({reason})") from None


def open_input(path: str | Path, exclude: Path | None = None) -> ImageInput | VideoInput:
    """predict.py's --input: one image, a video file, or every image under a folder (its outputs keep the
    subfolders); two inputs whose outputs would share a name are refused before anything is written."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return VideoInput(path)
        if suffix not in PHOTO_SUFFIXES:
            raise UserError(
                f"--input {path}: not a .png/.jpg/.jpeg image nor a video ({', '.join(VIDEO_SUFFIXES)}); expected an "
                f"image, a folder of images or a video file"
            )
        return ImageInput([path], [Path(path.stem)], f"image {path}")
    if not path.exists():
        raise UserError(f"--input {path}: no such file or folder (expected an image or a folder of images)")
    paths = list_images(path, "--input", exclude)
    names = [p.relative_to(path).with_suffix("") for p in paths]
    for name, count in Counter(names).items():
        if count > 1:
            clash = [str(p.relative_to(path)) for p, n in zip(paths, names) if n == name]
            raise UserError(
                f"--input {path}: {' and '.join(clash)} would both be written as {name}.png; expected one image per "
                f"file name"
            )
    return ImageInput(paths, names, f"{len(paths)} images of {path}")
