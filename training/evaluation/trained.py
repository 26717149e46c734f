"""A trained model as the tools use it: its weights, and from its model card (training/models/card.py) the
architecture, the classes and the profile it was trained at.

Defaults, in order: a flag the user gave (`--arch`, `--profile`), then the card beside the model
(`models/<id>.json`), then Cityscapes' 19 classes, `fast_scnn` and the tool's default profile (with a one-line
note saying so). A model is therefore measured and predicted at the resolution it was trained at without a flag.
A `--profile` for a model of another data set than Cityscapes is scaled to the native size its card records, as
the stage scaled it (`training.profiles.scale_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.data.classes import CITYSCAPES, ClassSet, describe
from training.data.layouts import open_dataset
from training.errors import UserError
from training.models.build import build_model, load_weights
from training.models.card import card_native_size, card_path, card_profile, read_card
from training.profiles import Profile, resolve_profile, scale_profile

DEFAULT_PROFILE = "highest"  # without a card or --profile: the curriculum's last stage (the original's default)


def card_classes(card: dict, path: Path) -> ClassSet:
    """The class set a card records (training.data.classes.ClassSet.to_dict's entry); a card without a usable one is
    a UserError naming it."""
    entry = card.get("classes")
    if not isinstance(entry, dict):
        raise UserError(f"{path}: model card without classes (expected dataset, classes, palette)")
    return ClassSet.from_dict(entry, str(path))


def predicts_cityscapes(classes: ClassSet) -> bool:
    """Whether a model of these classes predicts Cityscapes' 19 train classes: what the label-id export maps to label
    ids and what the Cityscapes val split scores."""
    return classes.same_classes(CITYSCAPES)


@dataclass
class TrainedModel:
    path: Path
    arch: str
    profile: Profile
    classes: ClassSet
    card: dict | None
    note: str  # one line: where the profile and the classes come from
    dataset: str | None = None  # the data set that scores it (--dataset, else the card's), where one does
    data_dir: str | None = None


def read_trained(path: str | Path, arch: str | None = None, profile: str | None = None) -> TrainedModel:
    """What the tools need to know about the model at `path` before loading it (its card, or the defaults)."""
    path = Path(path)
    card = read_card(path)
    if card is None:
        chosen = resolve_profile(profile or DEFAULT_PROFILE)
        note = f"note: no model card {card_path(path)}: {describe(CITYSCAPES)}; {chosen.describe()}" + (
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
    native = card_native_size(card)
    if profile and classes.dataset != "cityscapes" and native is not None:
        chosen = scale_profile(chosen, native)
    note = f"model card {card_path(path)}: {describe(classes)}; trained at {recorded.describe()}"
    if chosen != recorded:
        note += f"; --profile {profile} overrides it: {chosen.describe()}"
    return TrainedModel(path, arch or card.get("arch") or "fast_scnn", chosen, classes, card, note)


def data_set_of(trained: TrainedModel, dataset: str | None, data_dir: str | None) -> tuple[str, str]:
    """(--dataset, --data-dir) the model is scored on: by default the data set its card records, at
    ./data/<dataset>. A data set of other classes than the model's, or without a labelled val split, is refused in
    one line (before anything is measured)."""
    dataset = dataset or trained.classes.dataset
    data_dir = data_dir or f"./data/{dataset}"
    layout = open_dataset(dataset, data_dir)
    found = layout.classes
    if not found.same_classes(trained.classes):
        raise UserError(
            f"{trained.path}: predicts {describe(trained.classes)}, but --data-dir {data_dir} (--dataset {dataset}) "
            f"holds {describe(found)}; expected the data set the model was trained on (or --data-dir none)"
        )
    layout.pairs("val")
    return dataset, data_dir


def load_trained(trained: TrainedModel, device: torch.device, flag: str = "--model-path") -> nn.Module:
    """The model built for its classes, its weights loaded (checked), in eval mode on `device`."""
    model = build_model(trained.arch, trained.classes.num_classes)
    load_weights(model, trained.path, trained.arch, flag)
    return model.eval().to(device)
