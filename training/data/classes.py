"""Class sets: the classes a data set is labelled with, their colours, and how a mask file's values become train ids.

A `ClassSet` is a property of the data set (`--dataset cityscapes|camvid|folder`), carried by the model that trains
on it: its number of classes sizes the network's head, its names label the per-class tables, its palette colours the
previews. `lookup` maps every possible 8-bit mask value to a train id: a class index 0..N-1, `IGNORE_INDEX` (255,
void: skipped by the losses and the confusion matrix) or `UNDECLARED` (254: a value the data set does not define, which
`train_ids` refuses with one line naming the file and the value).

- `CITYSCAPES`: the 19 train classes of `training.data.images` (names, colours, label id -> train id table).
- `CAMVID`: the 11 classes of CamVid's SegNet version; annotation values 0..10 are the classes, 11 is void (255 too).
- a folder's `classes.json` (`read_classes_file`): `{"classes": [names], "palette": [[r, g, b], ...], "void": 255}`
  (optional `"void_colour": [r, g, b]` for colour masks); masks hold class indices, `void` is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.images import CLASS_NAMES, IGNORE_INDEX, PALETTE, label_lookup_table
from training.errors import UserError

UNDECLARED = 254  # train id of a mask value the data set does not define (never a class: at most 254 classes)
MAX_CLASSES = UNDECLARED  # class indices 0..253
DEFAULT_VOID_COLOUR = (0, 0, 0)  # in colour masks, unless the palette uses black for a class
CLASSES_FILE = "classes.json"
CLASSES_FILE_KEYS = ("classes", "palette", "void", "void_colour")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """The classes of a data set and how its mask files map to train ids (see the module's docstring)."""

    dataset: str  # 'cityscapes', 'camvid' or 'folder'
    names: tuple[str, ...]
    palette: tuple[RGB, ...]  # one (r, g, b) per class
    # 256 entries: mask value -> train id (0..N-1), IGNORE_INDEX or UNDECLARED
    lookup: tuple[int, ...] = field(repr=False)
    declared: str  # what a mask may hold, for error messages: "a CamVid class index (0-10) nor its void 11"
    void_colour: RGB | None = None  # colour masks: the colour read as void (None: no colour is void)
    colour_masks: bool = True  # whether RGB masks are read through the palette (Cityscapes' label files never are)
    ignore_index: int = IGNORE_INDEX
    table: np.ndarray = field(init=False, repr=False, compare=False)  # `lookup` as uint8[256], for numpy indexing

    def __post_init__(self):
        n = len(self.names)
        if not 1 <= n <= MAX_CLASSES or len(self.palette) != n or len(self.lookup) != 256:
            raise ValueError(f"class set {self.dataset}: {n} names, {len(self.palette)} colours, {len(self.lookup)}")
        if not set(self.lookup) <= set(range(n)) | {IGNORE_INDEX, UNDECLARED}:
            raise ValueError(
                f"class set {self.dataset}: lookup values outside 0..{n - 1}, {IGNORE_INDEX}, {UNDECLARED}"
            )
        table = np.array(self.lookup, dtype=np.uint8)
        table.flags.writeable = False
        object.__setattr__(self, "table", table)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_table(self) -> np.ndarray:
        """uint8[256, 3]: the colour of each train id, for previews; void and unused ids are black."""
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[: self.num_classes] = self.palette
        return colours

    def same_classes(self, other: ClassSet) -> bool:
        """Whether a model trained on one class set predicts the other's classes: the same names in the same order."""
        return self.names == other.names

    def train_ids(self, values: np.ndarray, source: str | Path) -> np.ndarray:
        """A mask of 8-bit values (class indices or label ids) as uint8 train ids; an undeclared value is a
        UserError naming `source` (the mask file) and the value."""
        train_ids = self.table[values]
        undeclared = train_ids == UNDECLARED
        if undeclared.any():
            bad = np.unique(values[undeclared]).tolist()
            raise UserError(f"{source}: value {bad[0]} is not {self.declared}{_and_more(bad)}")
        return train_ids

    def colour_train_ids(self, rgb: np.ndarray, source: str | Path) -> np.ndarray:
        """An HxWx3 uint8 colour mask as uint8 train ids through the palette (`void_colour` -> void); a colour that
        is neither is a UserError naming `source` and the colour."""
        if not self.colour_masks:
            raise UserError(f"{source}: a colour (RGB) mask; expected a single-channel 8-bit PNG of {self.dataset} ids")
        keys = _colour_keys(rgb)
        colours, ids = list(self.palette), list(range(self.num_classes))
        if self.void_colour is not None:
            colours, ids = colours + [self.void_colour], ids + [self.ignore_index]
        known = np.array([_colour_key(c) for c in colours], dtype=np.uint32)
        order = np.argsort(known)
        ids = np.array(ids, dtype=np.uint8)[order]
        position = np.minimum(np.searchsorted(known[order], keys), len(known) - 1)
        found = known[order][position] == keys
        if not found.all():
            bad = [_key_colour(k) for k in np.unique(keys[~found]).tolist()]
            void = f" nor its void colour {self.void_colour}" if self.void_colour is not None else ""
            raise UserError(
                f"{source}: colour {bad[0]} is not a colour of the {self.dataset} palette{void}{_and_more(bad)} "
                "(an RGB mask is read as colours; save class indices as a single-channel PNG)"
            )
        return ids[position]

    def to_dict(self) -> dict:
        """What a model card records: enough to rebuild the set without the data (`from_dict`)."""
        entry = {"dataset": self.dataset, "classes": list(self.names), "palette": [list(c) for c in self.palette]}
        if self.dataset == "folder":
            entry["void"] = self.lookup.index(IGNORE_INDEX)
            if self.void_colour is not None:
                entry["void_colour"] = list(self.void_colour)
        return entry

    @staticmethod
    def from_dict(entry: dict, source: str = "model card") -> ClassSet:
        """The class set that `to_dict` recorded; a UserError naming `source` when it is not one."""
        try:
            dataset, names = entry["dataset"], tuple(entry["classes"])
            palette = tuple(tuple(int(v) for v in c) for c in entry["palette"])
            if dataset == "folder":
                colour = entry.get("void_colour")
                return folder_class_set(names, palette, int(entry["void"]), tuple(colour) if colour else None, source)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source}: classes: expected the keys dataset, classes, palette (and void)") from None
        known = {c.dataset: c for c in (CITYSCAPES, CAMVID)}.get(dataset)
        if known is None:
            raise UserError(f"{source}: classes: unknown data set {dataset!r} (expected cityscapes, camvid or folder)")
        if known.names != names or known.palette != palette:
            raise UserError(
                f"{source}: classes: {len(names)} classes recorded as {dataset}'s; expected its own {known.num_classes}"
            )
        return known


def _and_more(bad: list) -> str:
    if len(bad) == 1:
        return ""
    shown = ", ".join(str(v) for v in bad[1:5])
    return f" (nor are {shown}{', ...' if len(bad) > 5 else ''})"


def _colour_key(colour) -> int:
    r, g, b = colour
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW uint32 r << 16 | g << 8 | b (uint32, not int64: 3x faster on a 2048x1024 mask)."""
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]


def _key_colour(key: int) -> RGB:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


# ------------------------------------------------------------------------------------------------------ Cityscapes
def _cityscapes() -> ClassSet:
    table = label_lookup_table()  # ids Cityscapes does not define are marked with a value outside 0..18 and 255
    num_classes = len(CLASS_NAMES)
    table[(table >= num_classes) & (table != IGNORE_INDEX)] = UNDECLARED
    return ClassSet(
        dataset="cityscapes",
        names=tuple(CLASS_NAMES),
        palette=tuple(tuple(int(v) for v in PALETTE[i]) for i in range(num_classes)),
        lookup=tuple(table.tolist()),
        declared="a Cityscapes label id (0-33) nor void 255",
        colour_masks=False,
    )


CITYSCAPES = _cityscapes()

# ---------------------------------------------------------------------------------------------------------- CamVid
# The 11-class CamVid of SegNet (Badrinarayanan et al.): annotation PNGs hold these indices, 11 is void ("Unlabelled").
# Colours: the palette commonly used with this version (SegNet's tutorial); void is black there.
CAMVID_CLASSES = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11


def _camvid() -> ClassSet:
    table = [UNDECLARED] * 256
    table[: len(CAMVID_CLASSES)] = range(len(CAMVID_CLASSES))
    table[CAMVID_VOID] = table[IGNORE_INDEX] = IGNORE_INDEX  # some conversions write void as 255
    return ClassSet(
        dataset="camvid",
        names=tuple(name for name, _ in CAMVID_CLASSES),
        palette=tuple(colour for _, colour in CAMVID_CLASSES),
        lookup=tuple(table),
        declared=f"a CamVid class index (0-{len(CAMVID_CLASSES) - 1}) nor its void {CAMVID_VOID} (or 255)",
        void_colour=DEFAULT_VOID_COLOUR,
    )


CAMVID = _camvid()

# ---------------------------------------------------------------------------------------------------------- folder


def folder_class_set(
    names: tuple[str, ...], palette: tuple[RGB, ...], void: int, void_colour: RGB | None, source: str
) -> ClassSet:
    """The class set of a folder data set; masks hold indices 0..N-1 and `void`. Refuses (UserError naming `source`)
    duplicate names or colours, a palette of another length, a void value that is a class index, too many classes.
    `void_colour` None: black, unless black is a class colour (then colour masks have no void colour)."""
    n = len(names)
    if not 1 <= n <= MAX_CLASSES:
        raise UserError(f"{source}: classes: expected 1 to {MAX_CLASSES} class names, got {n}")
    _refuse_duplicates(source, "classes", [name.strip().lower() for name in names], names)
    if len(palette) != n:
        raise UserError(f"{source}: palette: expected one [r, g, b] per class ({n}), got {len(palette)}")
    _refuse_duplicates(source, "palette", list(palette), palette)
    if not n <= void <= 255:
        raise UserError(f"{source}: void: expected a mask value that is not a class index ({n}-255), got {void}")
    if void_colour is None:
        void_colour = None if DEFAULT_VOID_COLOUR in palette else DEFAULT_VOID_COLOUR
    elif void_colour in palette:
        name = names[palette.index(void_colour)]
        raise UserError(f"{source}: void_colour: {list(void_colour)} is the colour of class {name!r}; expected another")
    table = [UNDECLARED] * 256
    table[:n] = range(n)
    table[void] = IGNORE_INDEX
    return ClassSet(
        dataset="folder",
        names=tuple(names),
        palette=tuple(palette),
        lookup=tuple(table),
        declared=f"a class index of {CLASSES_FILE} (0-{n - 1}) nor its void {void}",
        void_colour=void_colour,
    )


def _refuse_duplicates(source: str, key: str, keys: list, shown) -> None:
    seen: dict = {}
    for i, k in enumerate(keys):
        if k in seen:
            value = list(shown[i]) if key == "palette" else shown[i]
            raise UserError(
                f"{source}: {key}: {value!r} appears twice (entries {seen[k]} and {i}); expected distinct "
                + ("colours" if key == "palette" else "names")
            )
        seen[k] = i


def read_classes_file(path: str | Path) -> ClassSet:
    """A folder data set's `classes.json` as a ClassSet; anything malformed is a one-line UserError naming the file."""
    path = Path(path)
    example = '{"classes": ["road", "car"], "palette": [[128, 64, 128], [0, 0, 142]], "void": 255}'
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected the folder data set's class file, e.g. {example}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON ({error}); expected e.g. {example}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object such as {example}")
    unknown = sorted(set(data) - set(CLASSES_FILE_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; expected the keys {', '.join(CLASSES_FILE_KEYS)}")
    for key in ("classes", "palette", "void"):
        if key not in data:
            raise UserError(f"{path}: no {key!r} entry; expected e.g. {example}")
    names = data["classes"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise UserError(f"{path}: classes: expected a list of non-empty names, got {names!r:.80}")
    palette = data["palette"]
    if not isinstance(palette, list):
        raise UserError(f"{path}: palette: expected a list of [r, g, b] colours, got {palette!r:.80}")
    colours = tuple(_colour(path, f"palette entry {i}", c) for i, c in enumerate(palette))
    void = data["void"]
    if isinstance(void, bool) or not isinstance(void, int) or not 0 <= void <= 255:
        raise UserError(f"{path}: void: expected the mask value of void pixels, a whole number 0-255, got {void!r}")
    void_colour = _colour(path, "void_colour", data["void_colour"]) if "void_colour" in data else None
    return folder_class_set(tuple(names), colours, void, void_colour, str(path))


def _colour(path: Path, what: str, value) -> RGB:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    if not ok:
        raise UserError(f"{path}: {what}: expected [r, g, b] with whole numbers 0-255, got {value!r:.60}")
    return tuple(value)


def describe(classes: ClassSet) -> str:
    """One line: the data set and its classes, for logs."""
    names = ", ".join(classes.names) if classes.num_classes <= 20 else ", ".join(classes.names[:20]) + ", ..."
    return f"{classes.dataset}: {classes.num_classes} classes ({names})"
