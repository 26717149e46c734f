"""The demo set's layouts: where each file goes, and what its label file holds.

The painter (`demo.scene`) labels its scenes with Cityscapes label ids. Each layout says where a scene's image and
label file go and converts the label ids into what that data set's label files hold:

- `cityscapes`: `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and
  `gtFine/<split>/<city>/..._gtFine_labelIds.png` (label ids unchanged); a test split has images only.
- `camvid` (SegNet's version): `<split>/<seq>_<frame>.png` and `<split>annot/<seq>_<frame>.png` holding the 11
  CamVid class indices (11 = void), test split labelled too, as CamVid's is.
- `folder`: `images/<split>/<split>_<index>.jpg`, `masks/<split>/<split>_<index>.png` (5 classes: class indices,
  255 void; or with `mask_colours` RGB colours of the palette, black void) and `classes.json`; a test split has
  images only.

The class names and colours below are facts of the data sets that `training.data.classes` also holds (this package
may not import `training`); `tests/demo/test_demo_layouts.py` checks that both agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from demo.canvas import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRUCK,
    VEGETATION,
    WALL,
)

TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau")
TEST_CITIES = ("berlin", "bonn")
CITIES = {"train": TRAIN_CITIES, "val": VAL_CITIES, "test": TEST_CITIES}
FRAME = 19  # Cityscapes' annotated frame of each sequence is number 19
CAMVID_SEQUENCES = {"train": "0001TP", "val": "0016E5", "test": "Seq05VD"}  # sequence names as in CamVid
SPLIT_ORDER = ("train", "val", "test")

# CamVid, SegNet's 11 classes; annotation value 11 is void
CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_VOID = 11
CAMVID_FROM_CITYSCAPES = {  # the painter's classes -> CamVid's; every other label id is void
    SKY: "Sky",
    BUILDING: "Building",
    WALL: "Building",
    POLE: "Pole",
    TRAFFIC_LIGHT: "Pole",
    ROAD: "Road",
    SIDEWALK: "Pavement",
    VEGETATION: "Tree",
    TERRAIN: "Tree",
    TRAFFIC_SIGN: "SignSymbol",
    FENCE: "Fence",
    CAR: "Car",
    TRUCK: "Car",
    BUS: "Car",
    PERSON: "Pedestrian",
    RIDER: "Bicyclist",
    BICYCLE: "Bicyclist",
}

# The folder layout's own small class set (Cityscapes' colours for these classes)
FOLDER_CLASSES = (
    ("road", (128, 64, 128)),
    ("building", (70, 70, 70)),
    ("vegetation", (107, 142, 35)),
    ("vehicle", (0, 0, 142)),
    ("person", (220, 20, 60)),
)
FOLDER_VOID = 255
FOLDER_VOID_COLOUR = (0, 0, 0)
FOLDER_FROM_CITYSCAPES = {
    ROAD: "road",
    BUILDING: "building",
    WALL: "building",
    VEGETATION: "vegetation",
    TERRAIN: "vegetation",
    CAR: "vehicle",
    TRUCK: "vehicle",
    BUS: "vehicle",
    BICYCLE: "vehicle",
    PERSON: "person",
    RIDER: "person",
}


def lookup_table(mapping: dict[int, str], names: tuple[str, ...], void: int) -> np.ndarray:
    """uint8[256]: Cityscapes label id -> the index of its class in `names`; ids not in `mapping` -> `void`."""
    table = np.full(256, void, dtype=np.uint8)
    for label_id, name in mapping.items():
        table[label_id] = names.index(name)
    return table


CAMVID_TABLE = lookup_table(CAMVID_FROM_CITYSCAPES, CAMVID_CLASSES, CAMVID_VOID)
FOLDER_TABLE = lookup_table(FOLDER_FROM_CITYSCAPES, tuple(name for name, _ in FOLDER_CLASSES), FOLDER_VOID)
FOLDER_COLOURS = np.zeros((256, 3), dtype=np.uint8)  # class index -> colour; void -> the void colour
FOLDER_COLOURS[:] = FOLDER_VOID_COLOUR
FOLDER_COLOURS[: len(FOLDER_CLASSES)] = [colour for _, colour in FOLDER_CLASSES]


@dataclass(frozen=True)
class Entry:
    """One scene of the set: its split, its index there (the painter's seed stream) and its files."""

    split: str
    index: int
    image: str  # path relative to the root
    label: str | None  # None: an unlabelled image (a test split without labels)


@dataclass(frozen=True)
class DemoLayout:
    name: str
    default_size: tuple[int, int]  # (width, height): the data set's usual size
    owned: tuple[str, ...]  # what the generator writes at the root (and replaces when it regenerates)
    description: str  # for the manifest
    entry: Callable[[str, int], Entry]  # (split, index) -> where that scene's files go
    convert: Callable[[np.ndarray], np.ndarray]  # Cityscapes label ids -> what the label file holds
    split_dirs: tuple[str, ...]  # the image and label folders of a split ('{split}' filled in): made for train and val
    extra_files: dict[str, str] = field(default_factory=dict)  # relative path -> text (classes.json)

    def plan(self, num_train: int, num_val: int, num_test: int) -> list[Entry]:
        counts = {"train": num_train, "val": num_val, "test": num_test}
        return [self.entry(split, index) for split in SPLIT_ORDER for index in range(counts[split])]


def _cityscapes_entry(split: str, index: int) -> Entry:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index // len(cities):06d}_{FRAME:06d}"
    label = f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png" if split != "test" else None
    return Entry(split, index, f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", label)


def _camvid_entry(split: str, index: int) -> Entry:
    name = f"{CAMVID_SEQUENCES[split]}_{index:06d}.png"
    return Entry(split, index, f"{split}/{name}", f"{split}annot/{name}")


def _folder_entry(split: str, index: int) -> Entry:
    stem = f"{split}_{index:04d}"
    return Entry(split, index, f"images/{split}/{stem}.jpg", f"masks/{split}/{stem}.png" if split != "test" else None)


def classes_json(mask_colours: bool) -> str:
    """The folder layout's classes.json, one line per key (the void colour only where masks are colours)."""
    lines = [
        f'  "classes": {json.dumps([name for name, _ in FOLDER_CLASSES])}',
        f'  "palette": {json.dumps([list(colour) for _, colour in FOLDER_CLASSES])}',
        f'  "void": {FOLDER_VOID}',
    ]
    if mask_colours:
        lines.append(f'  "void_colour": {json.dumps(list(FOLDER_VOID_COLOUR))}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def get_layout(name: str, mask_colours: bool = False) -> DemoLayout:
    if name == "cityscapes":
        return DemoLayout(
            name,
            (1024, 512),
            ("leftImg8bit", "gtFine"),
            "Cityscapes leftImg8bit/ + gtFine/ *_gtFine_labelIds.png",
            _cityscapes_entry,
            lambda label_ids: label_ids,
            ("leftImg8bit/{split}", "gtFine/{split}"),
        )
    if name == "camvid":
        owned = tuple(f"{split}{suffix}" for split in SPLIT_ORDER for suffix in ("", "annot"))
        description = "CamVid (SegNet): <split>/*.png + <split>annot/*.png, class indices 0-10, 11 void"
        return DemoLayout(
            name, (480, 360), owned, description, _camvid_entry, CAMVID_TABLE.__getitem__, ("{split}", "{split}annot")
        )
    if name == "folder":
        what = "colours" if mask_colours else "class indices, 255 void"
        return DemoLayout(
            name,
            (640, 360),
            ("images", "masks", "classes.json"),
            f"folder: images/<split>/*.jpg + masks/<split>/*.png ({what}) + classes.json",
            _folder_entry,
            (lambda ids: FOLDER_COLOURS[FOLDER_TABLE[ids]]) if mask_colours else FOLDER_TABLE.__getitem__,
            ("images/{split}", "masks/{split}"),
            {"classes.json": classes_json(mask_colours)},
        )
    raise ValueError(name)


LAYOUT_NAMES = ("cityscapes", "camvid", "folder")
