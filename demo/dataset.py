"""A small synthetic data set of street scenes, written in the exact layout of Cityscapes, CamVid or a folder.

Why: the real Cityscapes cannot be downloaded here (it needs an account and a network), yet the tests and the
quick start must train and evaluate end to end. So this module paints simple street scenes (sky, road in
perspective, sidewalks, facades, trees, poles with signs and traffic lights, cars, buses, persons, cyclists, and
void regions such as the ego vehicle) and writes them, by default (`layout="cityscapes"`), as

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png   (8-bit RGB)
    <root>/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png    (8-bit 'L', label ids 0..33)
    <root>/leftImg8bit/test/<city>/...  with `num_test` > 0: images only, as Cityscapes' test split (no labels to score)

so that `torchvision.datasets.Cityscapes(root, split, mode='fine', target_type='semantic')`, the loader used for
the real data, reads it unchanged. The label maps hold Cityscapes label *ids* (not train ids): the usual id ->
train id mapping applies, and the void ids (unlabeled, ego vehicle, out of roi, static, ...) occur too.
`layout="camvid"` writes CamVid's SegNet layout (11 classes, 480x360 by default) and `layout="folder"` a folder of
image/mask pairs with its classes.json (5 classes, masks of class indices or, with `mask_colours`, of colours): see
`demo.layouts`. The same seed paints the same scenes in every layout.

Each class has its own base colour, jittered per image, with some texture, shading and noise, and the objects vary
in number, position and size, so a small network learns it from colour, texture and position within minutes on a
CPU without the task being trivial. The label map and the image are painted from the same shapes (painter's
algorithm, vectorised numpy masks), so they align exactly: `demo.scene` paints a scene layer by layer
(`demo.objects` the standing objects, `demo.canvas` the shapes, canvas and perspective); this
module writes the files.

Every image is a pure function of (seed, split, index): the same parameters give byte-identical files. The set is
generated once: `<root>/demo_manifest.json`, written last, records the parameters, and a call with the same
parameters returns at once.

    python -m training.demo_data --root data/demo_cityscapes --train 60 --val 20 --size 1024x512 --seed 0
    python -m training.demo_data --layout camvid --root data/demo_camvid
    python -m training.demo_data --layout folder --mask-colours --root data/demo_folder
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from demo.layouts import CITIES, LAYOUT_NAMES, TEST_CITIES, TRAIN_CITIES, VAL_CITIES, DemoLayout, get_layout
from demo.scene import draw_scene


class DemoDataError(ValueError):
    """Bad arguments or a folder the painter must not overwrite: one line, exit code 2 from the command line."""


__all__ = [
    "DEMO_DIR",
    "MANIFEST_NAME",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "TEST_CITIES",
    "make_demo_dataset",
    "ensure_demo_dataset",
    "main",
]

DEMO_DIR = Path("data/demo_cityscapes")  # relative to the repository root
MANIFEST_NAME = "demo_manifest.json"  # written last: its presence means the set is complete
MARKER_NAME = ".demo_generator"  # written first: the layout's folders here are ours to replace
GENERATOR_VERSION = 1  # bump when the drawing changes, so that old sets are regenerated
SPLITS = {"train": 0, "val": 1, "test": 2}  # the painter's seed stream of each split
LABELLED = ("train", "val")
PNG_COMPRESS_LEVEL = 1  # the images are noisy: more compression buys little
JPEG_QUALITY = 95  # the folder layout's images are JPEGs, as photos usually are
MIN_SIZE = (64, 32)

# ----------------------------------------------------------------------------------------------------------- writing


def _params(num_train, num_val, size, seed, num_test=0, layout="cityscapes", mask_colours=False) -> dict:
    params = {
        "generator": "training.demo_data",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "size": [size[0], size[1]],
        "seed": seed,
    }
    # the keys that came later are recorded only where used: a set made before them stays valid
    if num_test:
        params["num_test"] = num_test
    if layout != "cityscapes":
        params["layout"] = layout
    if mask_colours:
        params["mask_colours"] = True
    return params


def _check(num_train, num_val, size, seed, num_test=0, layout="cityscapes", mask_colours=False) -> dict:
    """The parameters, checked and normalised (`size` None: the layout's usual size)."""

    def count(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DemoDataError(f"{name}: expected a whole number >= 0, got {value!r}")
        return int(value)

    num_train, num_val = count("num_train", num_train), count("num_val", num_val)
    if num_train + num_val == 0:
        raise DemoDataError("num_train + num_val: expected at least one image, got 0")
    if layout not in LAYOUT_NAMES:
        raise DemoDataError(f"layout: expected one of {', '.join(LAYOUT_NAMES)}, got {layout!r}")
    if mask_colours and layout != "folder":
        raise DemoDataError(f"mask_colours: only the folder layout has colour masks, not {layout}")
    try:
        width, height = (int(v) for v in (size or get_layout(layout).default_size))
    except (TypeError, ValueError):
        raise DemoDataError(f"size: expected (width, height), got {size!r}") from None
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise DemoDataError(
            f"size: expected at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (width x height), got {width}x{height}"
        )
    return {
        "num_train": num_train,
        "num_val": num_val,
        "size": (width, height),
        "seed": count("seed", seed),
        "num_test": count("num_test", num_test),
        "layout": layout,
        "mask_colours": bool(mask_colours),
    }


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _owner(root: Path, manifest: dict | None) -> str | None:
    """The layout of the demo set already in `root` (complete or not), None when the generator wrote nothing there."""
    if manifest is not None:
        return manifest.get("params", {}).get("layout", "cityscapes")
    try:
        first = (root / MARKER_NAME).read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.removeprefix("layout: ") if first.startswith("layout: ") else "cityscapes"  # older markers


def _prepare(root: Path, layout: DemoLayout, manifest: dict | None) -> None:
    """Make `root` ready for a fresh set: refuse data the generator did not write, remove an older or partial set."""
    owner = _owner(root, manifest)
    if owner is not None and owner != layout.name:
        raise DemoDataError(
            f"{root}: holds a demo set in the {owner} layout; expected an empty folder or one with a {layout.name} "
            "demo set (nothing was written)"
        )
    found = [name for name in layout.owned if (root / name).exists()]
    if found and owner is None:
        raise DemoDataError(
            f"{root}: holds {' or '.join(found)} that the demo generator did not write; "
            "expected an empty or new folder for the demo data (nothing was written)"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    (root / MARKER_NAME).write_text(
        f"layout: {layout.name}\n{', '.join(layout.owned)} here: written by demo/dataset.py\n"
    )
    for name in found:  # an older or partial set: start afresh
        shutil.rmtree(root / name) if (root / name).is_dir() else (root / name).unlink()


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(pixels).save(path, quality=JPEG_QUALITY)
    else:
        Image.fromarray(pixels).save(path, compress_level=PNG_COMPRESS_LEVEL)


def _generate(root, **kwargs) -> tuple[Path, bool, float]:
    """Write the set unless a complete one with these parameters is there: (root, generated?, seconds)."""
    spec = _check(**kwargs)
    root, layout = Path(root), get_layout(spec["layout"], spec["mask_colours"])
    params = _params(**spec)
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("params") == params:
        return root, False, 0.0
    start = time.perf_counter()
    _prepare(root, layout, manifest)
    for split in LABELLED:
        for folder in layout.split_dirs:
            (root / folder.format(split=split)).mkdir(parents=True, exist_ok=True)
    for name, text in layout.extra_files.items():
        (root / name).write_text(text)
    width, height = spec["size"]
    for entry in layout.plan(spec["num_train"], spec["num_val"], spec["num_test"]):
        rng = np.random.default_rng([spec["seed"], SPLITS[entry.split], entry.index])
        image, label = draw_scene(rng, width, height)
        _save(root / entry.image, image)
        if entry.label is not None:
            _save(root / entry.label, layout.convert(label))
    seconds = time.perf_counter() - start
    record = {"params": params, "layout": layout.description}
    if layout.name == "cityscapes":
        record["cities"] = {split: list(CITIES[split]) for split in SPLITS if split in LABELLED or spec["num_test"]}
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    return root, True, seconds


def make_demo_dataset(
    root,
    num_train: int = 60,
    num_val: int = 20,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    num_test: int = 0,
    layout: str = "cityscapes",
    mask_colours: bool = False,
) -> Path:
    """Write `num_train` + `num_val` synthetic scenes of `size` (width, height; default the layout's usual size:
    cityscapes 1024x512, camvid 480x360, folder 640x360) under `root` in the `layout` ('cityscapes', 'camvid' or
    'folder', see `demo.layouts`), and `num_test` test images (Cityscapes and folder: images only; CamVid: with
    labels); train and val do not depend on `num_test`. `mask_colours`: the folder layout's masks hold colours.

    Returns `root` at once, writing nothing, when `root/demo_manifest.json` records the same parameters; an older
    or unfinished set there is replaced. Refuses (DemoDataError) a folder with the layout's folders of other origin,
    or a demo set of another layout.
    """
    return _generate(
        root,
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        num_test=num_test,
        layout=layout,
        mask_colours=mask_colours,
    )[0]


def ensure_demo_dataset(root=DEMO_DIR, **kwargs) -> Path:
    """`make_demo_dataset` that prints one line saying where the data is and whether it was generated or reused."""
    root, generated, seconds = _generate(root, **{**_defaults(), **kwargs})
    params = _read_manifest(root)["params"]
    what = f"{params['num_train']} train + {params['num_val']} val images, {params['size'][0]}x{params['size'][1]}"
    if generated:
        print(f"demo data: generated {what} (seed {params['seed']}) in {root} in {seconds:.1f} s")
    else:
        print(f"demo data: reusing {root} ({what}, seed {params['seed']})")
    return root


def _defaults() -> dict:
    return {"num_train": 60, "num_val": 20, "size": None, "seed": 0}


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise DemoDataError(f"--size: expected WIDTHxHEIGHT such as 1024x512, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo_data",
        description="Write a small synthetic street-scene data set in the Cityscapes layout (leftImg8bit/ + gtFine/ "
        "label ids), CamVid's SegNet layout or a folder of image/mask pairs with classes.json.",
    )
    parser.add_argument("--root", type=Path, default=DEMO_DIR, help=f"output folder (default {DEMO_DIR})")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, default="cityscapes", help="the data set's layout")
    parser.add_argument("--train", type=int, default=60, help="number of training images (default 60)")
    parser.add_argument("--val", type=int, default=20, help="number of validation images (default 20)")
    parser.add_argument(
        "--test",
        type=int,
        default=0,
        help="number of test images (default 0): without labels in the cityscapes and folder layouts",
    )
    parser.add_argument(
        "--size", help="image size WIDTHxHEIGHT (default: cityscapes 1024x512, camvid 480x360, folder 640x360)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--mask-colours", action="store_true", help="folder layout: masks of palette colours")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = parser.parse_args(argv)
    spec = _check(args.train, args.val, _parse_size(args.size), args.seed, args.test, args.layout, args.mask_colours)
    root, generated, seconds = _generate(args.root, **spec)
    (width, height), what = spec["size"], f"{args.layout} layout"
    if not generated:
        print(
            f"{root} already holds this demo set ({args.train} train + {args.val} val images, "
            f"{width}x{height}, seed {args.seed}, {what}): nothing written"
        )
        return root
    print(f"wrote the demo set to {root} ({width}x{height}, seed {args.seed}, {what}) in {seconds:.1f} s:")
    _print_summary(get_layout(args.layout).plan(args.train, args.val, args.test))
    return root


def _print_summary(plan: list) -> None:
    """Per split: the number of images and label maps (and the images per city in the Cityscapes layout)."""
    for split in SPLITS:
        entries = [e for e in plan if e.split == split]
        if not entries:
            continue
        labels = sum(e.label is not None for e in entries)
        folders = Counter(Path(e.image).parent.name for e in entries)
        detail = f" ({', '.join(f'{c} {n}' for c, n in sorted(folders.items()))})" if set(folders) != {split} else ""
        print(f"  {split}: {len(entries)} images + " + (f"{labels} label maps" if labels else "no labels") + detail)


def run(argv: list[str] | None = None) -> None:
    """The command line: a DemoDataError becomes one `error:` line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        main(args)
    except DemoDataError as error:
        if "--debug" in args:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
