"""Data set layouts: where a data set's images and masks are, pair by pair, and a mask file read as train ids.

    layout = open_dataset("camvid", "data/camvid")    # --dataset, --data-dir; layout.classes is its ClassSet
    layout.pairs("train")                             # [Pair(image, mask), ...], sorted by file name
    layout.pairs("test", labelled=False)              # images only: Pair(image, None)
    layout.read_mask(pair.mask)                       # HxW uint8 train ids (void 255)

- `cityscapes`: `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` with
  `gtFine/<split>/<city>/<name>_gtFine_labelIds.png` (label ids 0..33).
- `camvid` (SegNet's version): `<split>/<name>.png` with `<split>annot/<name>.png` (class indices 0..10, 11 void),
  splits train, val, test.
- `folder`: `images/<split>/<stem>.<png|jpg|...>` with `masks/<split>/<stem>.png`, and `classes.json` at the root
  (`training.data.classes.read_classes_file`).

How a mask file is read (`read_mask`): by its PNG mode. 'L', 'P' (a palette image: its indices, not its colours) and
'1' hold values that the class set's lookup table maps (class indices, or Cityscapes label ids); 'RGB' and 'RGBA' (alpha
ignored) hold colours, mapped through the class set's palette. Anything else (16-bit, grey + alpha) is refused.

Every refusal is one UserError line naming the folder or file at fault and what was expected: a missing folder, a
split without images, an image without a mask (or a mask without an image), a file that is not an image, a mask value
the class set does not declare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from training.data.classes import CAMVID, CITYSCAPES, CLASSES_FILE, ClassSet, read_classes_file
from training.data.images import read_rgb
from training.errors import UserError
from training.profiles import REFERENCE_SIZE, Profile, scale_profile

DATASETS = ("cityscapes", "camvid", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INDEX_MODES = ("L", "P", "1")  # masks of values (class indices or label ids)
COLOUR_MODES = ("RGB", "RGBA")  # masks of colours


class Pair(NamedTuple):
    image: Path
    mask: Path | None  # None when the split was listed with labelled=False


class Layout:
    """A data set on disk: its class set and its (image, mask) pairs per split."""

    name = ""
    expected = ""  # the layout in words, for error messages

    def __init__(self, root: str | Path, classes: ClassSet):
        self.root = Path(root)
        self.classes = classes

    def pairs(self, split: str, labelled: bool = True) -> list[Pair]:
        """The split's images with their masks (labelled) or alone (labelled=False), sorted by path."""
        raise NotImplementedError

    def read_mask(self, path: str | Path) -> np.ndarray:
        return read_mask(path, self.classes)

    def native_size(self, split: str = "train") -> tuple[int, int]:
        """The size (W, H) that the profiles scale: the most common image size of the split."""
        return most_common_size(pair.image for pair in self.pairs(split, labelled=False))

    def profile(self, profile: Profile) -> Profile:
        """`profile` for this data set's images (`training.profiles.scale_profile`): never distorted."""
        return scale_profile(profile, self.native_size())

    def _folder(self, *parts: str) -> Path:
        folder = self.root.joinpath(*parts)
        if not folder.is_dir():
            raise UserError(f"--data-dir {self.root}: missing {'/'.join(parts)}/ (expected {self.expected})")
        return folder


class CityscapesLayout(Layout):
    name = "cityscapes"
    expected = (
        "the Cityscapes layout leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "gtFine/<split>/<city>/*_gtFine_labelIds.png"
    )
    IMAGE_END, MASK_END = "_leftImg8bit.png", "_gtFine_labelIds.png"

    def pairs(self, split: str, labelled: bool = True) -> list[Pair]:
        image_dir = self._folder("leftImg8bit", split)
        images = sorted(image_dir.glob(f"*/*{self.IMAGE_END}"))
        if not images:
            raise UserError(f"--data-dir {self.root}: leftImg8bit/{split}/ holds no images (expected {self.expected})")
        if not labelled:
            return [Pair(image, None) for image in images]
        mask_dir = self._folder("gtFine", split)
        masks = {
            image: mask_dir / image.parent.name / (image.name[: -len(self.IMAGE_END)] + self.MASK_END)
            for image in images
        }
        _refuse_unpaired(images, masks, sorted(mask_dir.glob(f"*/*{self.MASK_END}")), "label file")
        return [Pair(image, masks[image]) for image in images]

    def native_size(self, split: str = "train") -> tuple[int, int]:
        """The profile table is Cityscapes' own: it applies as written, whatever the files' size (as before)."""
        return REFERENCE_SIZE


class CamVidLayout(Layout):
    name = "camvid"
    expected = "the CamVid SegNet layout train/ trainannot/ val/ valannot/ test/ testannot/, same file names"

    def pairs(self, split: str, labelled: bool = True) -> list[Pair]:
        images = _images(self._folder(split), self.root)
        if not labelled:
            return [Pair(image, None) for image in images]
        return _pair_by_stem(images, self._folder(f"{split}annot"), self.root)


class FolderLayout(Layout):
    name = "folder"
    expected = f"the folder layout images/<split>/*, masks/<split>/*.png (same stems) and {CLASSES_FILE}"

    def pairs(self, split: str, labelled: bool = True) -> list[Pair]:
        images = _images(self._folder("images", split), self.root)
        if not labelled:
            return [Pair(image, None) for image in images]
        return _pair_by_stem(images, self._folder("masks", split), self.root)


LAYOUTS = {layout.name: layout for layout in (CityscapesLayout, CamVidLayout, FolderLayout)}


def _images(folder: Path, root: Path) -> list[Path]:
    """The image files of a split folder, sorted; hidden files are skipped, anything else is refused."""
    images, stems = [], {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{path}: not an image file (expected only images {', '.join(IMAGE_SUFFIXES)} here)")
        if path.stem in stems:
            raise UserError(f"{path}: a second image with stem {path.stem!r} (besides {stems[path.stem].name})")
        stems[path.stem] = path
        images.append(path)
    if not images:
        raise UserError(f"--data-dir {root}: {folder.relative_to(root)}/ holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _pair_by_stem(images: list[Path], mask_dir: Path, root: Path) -> list[Pair]:
    masks = {image: mask_dir / f"{image.stem}.png" for image in images}
    found = []
    for path in sorted(mask_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file() or path.suffix.lower() != ".png":
            raise UserError(f"{path}: not a PNG mask (expected only <image stem>.png files here)")
        found.append(path)
    _refuse_unpaired(images, masks, found, "mask")
    return [Pair(image, masks[image]) for image in images]


def _refuse_unpaired(images: list[Path], masks: dict[Path, Path], found: list[Path], what: str) -> None:
    """Every image has its mask and every mask its image."""
    missing = [image for image in images if not masks[image].is_file()]
    if missing:
        more = f"; {len(missing)} of {len(images)} images lack one" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: no {what} {masks[missing[0]]} (expected one per image{more})")
    orphans = sorted(set(found) - set(masks.values()))
    if orphans:
        more = f"; {len(orphans)} such files" if len(orphans) > 1 else ""
        raise UserError(f"{orphans[0]}: a {what} without its image (expected an image of the same name{more})")


def read_mask(path: str | Path, classes: ClassSet) -> np.ndarray:
    """A mask file as HxW uint8 train ids: values through the class set's lookup table, colours through its palette
    (see the module's docstring for how the PNG mode decides); an undeclared value is a UserError naming the file."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in INDEX_MODES:
                return classes.train_ids(np.asarray(image).astype(np.uint8, copy=False), path)
            if mode in COLOUR_MODES:
                return classes.colour_train_ids(np.asarray(image)[..., :3], path)
    except (OSError, SyntaxError, ValueError) as error:  # Pillow: missing, unidentified, truncated or broken files
        raise UserError(f"{path}: cannot read the mask ({getattr(error, 'strerror', None) or error})") from None
    raise UserError(
        f"{path}: a mask of PNG mode {mode!r}; expected 8-bit class indices (mode L or P) or colours (RGB or RGBA)"
    )


def check_sizes(pair: Pair) -> None:
    """Refuse a mask whose size differs from its image's (e.g. a photo rotated by its EXIF orientation tag, which the
    readers do not apply); reads the files' headers only."""
    sizes = []
    for path in pair:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    (w, h), (mw, mh) = sizes
    if (w, h) != (mw, mh):
        raise UserError(f"{pair.mask}: {mw}x{mh} pixels, its image {pair.image.name} {w}x{h}; expected the same size")


def dataset_classes(dataset: str, data_dir: str | Path) -> ClassSet:
    """The class set of `--dataset` (a folder data set's from its data dir's classes.json)."""
    if dataset == "cityscapes":
        return CITYSCAPES
    if dataset == "camvid":
        return CAMVID
    if dataset == "folder":
        return read_classes_file(_data_dir(data_dir, FolderLayout) / CLASSES_FILE)
    raise UserError(f"--dataset {dataset}: unknown data set; expected one of {', '.join(DATASETS)}")


def open_dataset(dataset: str, data_dir: str | Path) -> Layout:
    """`--dataset` at `--data-dir`: its layout, with its class set as `.classes`."""
    classes = dataset_classes(dataset, data_dir)
    return LAYOUTS[dataset](_data_dir(data_dir, LAYOUTS[dataset]), classes)


def _data_dir(data_dir: str | Path, layout: type[Layout]) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root}: no such directory (expected {layout.expected})")
    return root


def most_common_size(images: Iterable[str | Path]) -> tuple[int, int]:
    """The most common image size (width, height) of the files (the first seen on a tie), read from their headers."""
    sizes: Counter = Counter()
    for path in images:
        try:
            with Image.open(path) as image:
                sizes[image.size] += 1
        except (OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{path}: cannot read the image ({getattr(error, 'strerror', None) or error})") from None
    if not sizes:
        raise ValueError("most_common_size: no images")
    return sizes.most_common(1)[0][0]


def native_size(dataset: str, data_dir: str | Path) -> tuple[int, int]:
    """The size (W, H) the profiles of `--dataset` at `--data-dir` are fractions of: Cityscapes' 2048x1024 (the
    table's frame, whatever its files' size), another data set's most common training image size."""
    if dataset == "cityscapes":
        return REFERENCE_SIZE
    return open_dataset(dataset, data_dir).native_size()


def dataset_profile(profile: Profile, dataset: str, native: tuple[int, int]) -> Profile:
    """The profile a stage (and a tool) uses on `dataset` of native size `native`: Cityscapes' table as written
    (nothing changes for it), any other data set's scaled to its native size (`scale_profile`: never distorted)."""
    if dataset == "cityscapes":
        return profile
    return scale_profile(profile, native)


@dataclass(frozen=True)
class SampleReader:
    """How the training dataset and its cache read a CamVid or folder sample's files (picklable, for the loader and
    cache workers): any image type of the layouts, its stored pixels as they are (no EXIF orientation, like the
    masks), and masks through `read_mask` (values or colours; an undeclared value refused). Cityscapes has none:
    its files are read as they always were (`training.data.images.read_png`, `read_train_ids`)."""

    classes: ClassSet

    def image(self, path: str) -> torch.Tensor:
        """uint8 RGB 3xHxW."""
        return read_rgb(path)

    def mask(self, path: str) -> torch.Tensor:
        """uint8 train ids HxW (void 255)."""
        return torch.from_numpy(np.ascontiguousarray(read_mask(path, self.classes)))

    def manifest(self) -> dict:
        """What a cache built with this reader records besides its files: the class set (a changed classes.json,
        e.g. another void value, rebuilds the cache). Cityscapes' caches record nothing more (they stay valid)."""
        return {"classes": self.classes.to_dict()}
