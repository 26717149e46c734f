"""The curriculum's resolution profiles (sizes are width x height, as in the original project).

Each train*.py keeps its own copy of this table so that a user can read and edit it in the script it drives;
`tests/test_profiles.py` imports the four scripts and checks that the copies shipped with the project equal this
one. `measurements/resolutions.csv` is generated from it, and a trained model's card (`models/<id>.json`) records the
profile it was trained at, so the tools need neither copy to use the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from training.errors import UserError

# name: ((image width, image height), (patch width, patch height)); stage k of the curriculum uses profile k
PROFILES = {
    "low": ((576, 288), (448, 224)),
    "medium": ((768, 384), (576, 288)),
    "high": ((1024, 512), (768, 384)),
    "higher": ((1536, 768), (1152, 576)),
    "highest": ((2048, 1024), (1536, 768)),
}


@dataclass(frozen=True)
class Profile:
    name: str
    number: int
    image_size: tuple[int, int]  # (width, height) the image is resized to
    patch_size: tuple[int, int]  # (width, height) of the random training crop

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.image_size[1], self.image_size[0]

    @property
    def patch_hw(self) -> tuple[int, int]:
        return self.patch_size[1], self.patch_size[0]

    def describe(self) -> str:
        (iw, ih), (pw, ph) = self.image_size, self.patch_size
        return f"profile {self.number} '{self.name}': image {iw}x{ih}, patch {pw}x{ph} (W x H)"


def resolve_profile(value: str | int, table: dict = PROFILES) -> Profile:
    """A profile by name ('low') or number (1-5, as a string or int)."""
    names = list(table)
    text = str(value).strip().lower()
    if text.isdigit() and 1 <= int(text) <= len(names):
        text = names[int(text) - 1]
    if text not in table:
        choices = ", ".join(f"{i} {n}" for i, n in enumerate(names, 1))
        raise UserError(f"--profile: unknown profile {value!r}; expected a name or number of: {choices}")
    image, patch = table[text]
    if patch[0] > image[0] or patch[1] > image[1]:
        raise UserError(f"profile {text!r}: patch {patch} is larger than image {image}")
    return Profile(text, names.index(text) + 1, tuple(image), tuple(patch))


# The frame the table's sizes are given in: Cityscapes' native size (W x H). Profile k's image size is the fraction
# image_k / REFERENCE_SIZE of it; a data set of another size or aspect ratio gets the same fraction of its own size.
REFERENCE_SIZE = (2048, 1024)
PATCH_MULTIPLE = 32  # Fast-SCNN's total stride: a patch of a multiple of 32 keeps every feature map exact


def scale_profile(
    profile: Profile, native_size: tuple[int, int], reference: tuple[int, int] = REFERENCE_SIZE
) -> Profile:
    """The profile for a data set whose images are `native_size` (W, H): the same fraction of its native size that the
    profile is of Cityscapes' (`reference`), so images are never distorted.

    image = native x (profile image / reference) per axis, rounded to whole pixels: the aspect ratio is the data set's
    own (to within a pixel), since the table's sizes are all 2:1 like the reference. The patch (a crop, which cannot
    distort) keeps the profile's patch/image fraction, rounded to a multiple of 32, at least 32 and at most the image.
    Cityscapes' own 2048x1024 gives the table unchanged (its sizes are multiples of 32). Pure: no files are read."""
    native_w, native_h = (int(v) for v in native_size)
    if native_w < 1 or native_h < 1:
        raise UserError(f"native image size {native_w}x{native_h}: expected a positive width and height")
    image = tuple(
        max(1, _round_half_up(n * i / r)) for n, i, r in zip((native_w, native_h), profile.image_size, reference)
    )
    patch = tuple(
        min(im, max(PATCH_MULTIPLE, PATCH_MULTIPLE * _round_half_up(im * p / (i * PATCH_MULTIPLE))))
        for im, p, i in zip(image, profile.patch_size, profile.image_size)
    )
    return replace(profile, image_size=image, patch_size=patch)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)
