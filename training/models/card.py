"""The model card: `models/<id>.json` beside every `models/<id>.pth`, what a tool needs to use the model.

The `.pth` stays a plain state_dict (what `fast_scnn.Model(...).load_state_dict` accepts); the card says how it was
made and how to use it: the script, run and stage, the profile (name, number, image and patch size as "WxH"
strings), the classes (`ClassSet.to_dict()`: data set, names, palette, void), the arguments that shaped the
weights, the model it started from with its content hash, the best and last validation metrics with their
protocol, and the code's git commit. Both files are written atomically (training/files.py), the card after the weights.

Keys (version 1; readers must accept extra keys):
    version, experiment_id, script, arch, run (int | None), stage (int | None),
    profile: {name, number, image_size "WxH", patch_size "WxH"},
    native_size: "WxH" (the size the profile is a fraction of: Cityscapes' 2048x1024, another data set's most
                 common training image size; training.profiles.scale_profile),
    classes: training.data.classes.ClassSet.to_dict() = {dataset, classes [names], palette [[r, g, b]]
             (+ void, void_colour for a folder data set)},
    args: {flag: value} (the arguments that change the weights),
    init_from: {path, sha256} | None,
    best: {epoch, miou, mean_dice, pixel_accuracy}, last: {epoch, miou, mean_dice, pixel_accuracy},
    protocol: str (how the metrics were scored), git_commit: str | None, written: ISO date.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from training.errors import UserError
from training.files import save_bytes
from training.profiles import Profile

CARD_VERSION = 1


def card_path(model_path: str | Path) -> Path:
    """`models/<id>.json` for `models/<id>.pth`."""
    return Path(model_path).with_suffix(".json")


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): what a later stage checks to know its starting model did not change."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(folder: str | Path = ".") -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside a git checkout."""
    try:

        def run(*args):
            return subprocess.run(
                ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        commit = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def size_text(size: tuple[int, int]) -> str:
    """(width, height) -> 'WxH'."""
    return f"{size[0]}x{size[1]}"


def parse_size_text(text: str) -> tuple[int, int]:
    width, _, height = str(text).lower().partition("x")
    return int(width), int(height)


def profile_entry(profile: Profile) -> dict:
    return {
        "name": profile.name,
        "number": profile.number,
        "image_size": size_text(profile.image_size),
        "patch_size": size_text(profile.patch_size),
    }


def card_profile(card: dict) -> Profile:
    """The profile the card's model was trained at."""
    entry = card["profile"]
    return Profile(
        entry["name"], int(entry["number"]), parse_size_text(entry["image_size"]), parse_size_text(entry["patch_size"])
    )


def card_native_size(card: dict) -> tuple[int, int] | None:
    """The native size a card records (None on cards written before it was recorded)."""
    entry = card.get("native_size")
    return parse_size_text(entry) if entry else None


def write_card(model_path: str | Path, card: dict) -> Path:
    """Write the card of `model_path` atomically; returns its path."""
    path = card_path(model_path)
    body = {"version": CARD_VERSION, **card}
    save_bytes((json.dumps(body, indent=2, sort_keys=False, default=str) + "\n").encode(), path)
    return path


def read_card(model_path: str | Path) -> dict | None:
    """The card beside `model_path`; None when there is none (a model from elsewhere). A card that cannot be read
    is a UserError naming it."""
    path = card_path(model_path)
    if not path.exists():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path}: unreadable model card ({type(error).__name__}); expected the JSON the stage writes"
        ) from None
    if not isinstance(card, dict) or not isinstance(card.get("version"), int) or card["version"] > CARD_VERSION:
        raise UserError(f"{path}: not a model card of version <= {CARD_VERSION}")
    return card
