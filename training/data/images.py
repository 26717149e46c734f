"""Reading the data set's files: PNG decoding, the Cityscapes label-id -> train-id table, and the profile resize.

A leaf module (it imports no other module of the project's data path): the loaders (`training.data.dataset`), the
cache that stores resized samples (`training.data.cache`) and the evaluation (`training.evaluation.scoring`) all read
files and map labels the same way through it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision
from torchvision.datasets import Cityscapes
from torchvision.io import ImageReadMode, decode_jpeg, decode_png
from torchvision.transforms import v2

from training.errors import UserError
from training.profiles import Profile

# torchvision 0.29 deprecates its PNG decoder (in favour of TorchCodec) but it is still the fastest here: ~39 ms for a
# 2048x1024 PNG against PIL's ~48 ms. Its warning would repeat in every worker.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)

IGNORE_INDEX = 255

TRAIN_CLASSES = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX), key=lambda c: c.train_id)
CLASS_NAMES = [c.name for c in TRAIN_CLASSES]
NUM_CLASSES = len(TRAIN_CLASSES)
# Colours of the train ids for previews; void (255) is drawn black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _c in TRAIN_CLASSES:
    PALETTE[_c.train_id] = _c.color

_INVALID = 254  # marks label ids that Cityscapes does not define (a corrupt or foreign label file)


def label_lookup_table() -> np.ndarray:
    """uint8[256]: Cityscapes label id -> train id; void ids -> 255; ids Cityscapes does not define -> 254."""
    table = np.full(256, _INVALID, dtype=np.uint8)
    table[IGNORE_INDEX] = IGNORE_INDEX  # some tools write void as 255
    for c in Cityscapes.classes:
        if 0 <= c.id < 256:
            table[c.id] = c.train_id if 0 <= c.train_id < IGNORE_INDEX else IGNORE_INDEX
    return table


LABEL_TO_TRAIN_ID = torch.from_numpy(label_lookup_table())
_LOOKUP = label_lookup_table()


def read_png(path: str, mode: ImageReadMode) -> torch.Tensor:
    """Decode a PNG to a uint8 CxHxW tensor; a missing or corrupt file is a UserError naming it."""
    try:
        return decode_png(torchvision.io.read_file(path), mode=mode)
    except OSError as error:
        raise UserError(f"cannot read PNG {path}: {error.strerror or error}") from None
    except RuntimeError:  # libpng's own words are internal ("decode_png.cpp:62, Internal error")
        raise UserError(f"cannot read PNG {path}: corrupt or truncated PNG data (expected an 8-bit PNG)") from None


def read_rgb(path: str) -> torch.Tensor:
    """Any image file of a data set (PNG, JPEG, BMP, TIFF, WebP) as uint8 RGB 3xHxW, as stored: EXIF orientation is
    not applied, so an image keeps the size and orientation of its mask. A missing or corrupt file is a UserError."""
    suffix = str(path).lower().rsplit(".", 1)[-1]
    if suffix == "png":
        return read_png(path, ImageReadMode.RGB)
    try:
        if suffix in ("jpg", "jpeg"):
            return decode_jpeg(torchvision.io.read_file(path), mode=ImageReadMode.RGB)
        from PIL import Image

        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    except OSError as error:
        raise UserError(f"cannot read image {path}: {getattr(error, 'strerror', None) or error}") from None
    except (RuntimeError, SyntaxError, ValueError):
        raise UserError(f"cannot read image {path}: corrupt or truncated image data") from None


def read_train_ids(path: str) -> torch.Tensor:
    """A `*_gtFine_labelIds.png` as a HxW uint8 tensor of train ids (void = 255)."""
    label_ids = read_png(path, ImageReadMode.UNCHANGED)
    if label_ids.shape[0] != 1:
        raise UserError(
            f"label file {path}: expected a single-channel PNG of label ids, got {label_ids.shape[0]} channels"
        )
    ids = label_ids[0].numpy()
    train_ids = _LOOKUP[ids]  # numpy indexes with the uint8 ids directly: ~10x faster than a torch gather on int64
    invalid = train_ids == _INVALID
    if invalid.any():
        bad = sorted(np.unique(ids[invalid]).tolist())
        raise UserError(f"label file {path}: label ids {bad[:5]} are not Cityscapes ids (expected 0-33 or 255)")
    return torch.from_numpy(train_ids)


def resize(profile: Profile) -> v2.Transform:
    """The first op of every transform and what the cache stores: antialiased on uint8 images, nearest on masks.
    An image already at the size is returned unchanged, so a cached sample passes through untouched."""
    return v2.Resize(profile.image_hw, antialias=True)  # masks are resized by nearest neighbour (tv_tensors.Mask)
