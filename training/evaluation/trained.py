"""A trained model as the tools use it: its weights, and from its model card (training/models/card.py) the
architecture, the classes and the profile it was trained at.

Defaults, in order: a flag the user gave (`--arch`, `--profile`), then the card beside the model
(`models/<id>.json`), then Cityscapes' 19 classes, `fast_scnn` and the tool's default profile (with a one-line
note saying so). A model is therefore measured and predicted at the resolution it was trained at without a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.data.dataset import CLASS_NAMES, IGNORE_INDEX, PALETTE
from training.errors import UserError
from training.evaluation.export import palette_array
from training.models.build import build_model, load_weights
from training.models.card import card_path, card_profile, read_card
from training.profiles import Profile, resolve_profile

DEFAULT_PROFILE = "highest"  # without a card or --profile: the curriculum's last stage (the original's default)


@dataclass(frozen=True)
class ClassSet:
    dataset: str
    names: tuple[str, ...]
    palette: np.ndarray = field(compare=False)  # 256x3 uint8: class index -> colour
    void: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def is_cityscapes(self) -> bool:
        """Cityscapes' 19 train classes: what the label-id export and the Cityscapes val split score."""
        return self.dataset == "cityscapes" and self.names == tuple(CLASS_NAMES)

    def describe(self) -> str:
        return f"{self.num_classes} {self.dataset} classes"


CITYSCAPES = ClassSet("cityscapes", tuple(CLASS_NAMES), PALETTE, IGNORE_INDEX)


def card_classes(card: dict, path: Path) -> ClassSet:
    """The class set a card records; a card without a usable one is a UserError naming it."""
    entry = card.get("classes")
    # names: card.py's key; "classes": what training.data.classes.ClassSet.to_dict writes (the datasets branch)
    names = (entry.get("names") or entry.get("classes")) if isinstance(entry, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: model card without classes.names (expected the list of class names)")
    if len(names) > 255:
        raise UserError(f"{path}: {len(names)} classes; the tools write 8-bit class indices (expected <= 255)")
    colours = entry.get("palette") or []
    if colours and (len(colours) != len(names) or any(len(c) != 3 for c in colours)):
        raise UserError(f"{path}: classes.palette has {len(colours)} colours for {len(names)} classes")
    palette = palette_array(colours) if colours else PALETTE
    return ClassSet(str(entry.get("dataset", "cityscapes")), tuple(names), palette, int(entry.get("void", 255)))


@dataclass
class TrainedModel:
    path: Path
    arch: str
    profile: Profile
    classes: ClassSet
    card: dict | None
    note: str  # one line: where the profile and the classes come from


def read_trained(path: str | Path, arch: str | None = None, profile: str | None = None) -> TrainedModel:
    """What the tools need to know about the model at `path` before loading it (its card, or the defaults)."""
    path = Path(path)
    card = read_card(path)
    if card is None:
        chosen = resolve_profile(profile or DEFAULT_PROFILE)
        note = f"note: no model card {card_path(path)}: {CITYSCAPES.describe()}, {chosen.describe()}" + (
            "" if profile else " (the default; --profile to choose)"
        )
        return TrainedModel(path, arch or "fast_scnn", chosen, CITYSCAPES, None, note)
    try:
        recorded = card_profile(card)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{card_path(path)}: model card without a readable profile (expected name, number, image and patch size)"
        ) from None
    classes = card_classes(card, card_path(path))
    chosen = resolve_profile(profile) if profile else recorded
    note = f"model card {card_path(path)}: {classes.describe()}, trained at {recorded.describe()}"
    if chosen != recorded:
        note += f"; --profile {profile} overrides it: {chosen.describe()}"
    return TrainedModel(path, arch or card.get("arch") or "fast_scnn", chosen, classes, card, note)


def load_trained(trained: TrainedModel, device: torch.device, flag: str = "--model-path") -> nn.Module:
    """The model built for its classes, its weights loaded (checked), in eval mode on `device`."""
    model = build_model(trained.arch, trained.classes.num_classes)
    load_weights(model, trained.path, trained.arch, flag)
    return model.eval().to(device)
