"""The curriculum's resolution profiles (sizes are width x height, as in the original project).

Each train*.py keeps its own copy of this table so that a user can read and edit it in the script it drives;
`tests/test_profiles.py` imports the four scripts and checks that the copies shipped with the project equal this
one. `measurements/resolutions.csv` is generated from it, and a trained model's card (`models/<id>.json`) records the
profile it was trained at, so the tools need neither copy to use the model.
"""

from __future__ import annotations

from dataclasses import dataclass

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
