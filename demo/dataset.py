"""A small synthetic data set of street scenes, written in the exact layout of Cityscapes.

Why: the real Cityscapes cannot be downloaded here (it needs an account and a network), yet the tests and the
quick start must train and evaluate end to end. So this module paints simple street scenes (sky, road in
perspective, sidewalks, facades, trees, poles with signs and traffic lights, cars, buses, persons, cyclists, and
void regions such as the ego vehicle) and writes them as

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png   (8-bit RGB)
    <root>/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png    (8-bit 'L', label ids 0..33)
    <root>/leftImg8bit/test/<city>/...  with `num_test` > 0: images only, as Cityscapes' test split (no labels to score)

so that `torchvision.datasets.Cityscapes(root, split, mode='fine', target_type='semantic')`, the loader used for
the real data, reads it unchanged. The label maps hold Cityscapes label *ids* (not train ids): the usual id ->
train id mapping applies, and the void ids (unlabeled, ego vehicle, out of roi, static, ...) occur too.

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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

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
MARKER_NAME = ".demo_generator"  # written first: this folder's leftImg8bit/ and gtFine/ are ours to replace
GENERATOR_VERSION = 1  # bump when the drawing changes, so that old sets are regenerated
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau")
TEST_CITIES = ("berlin", "bonn")
SPLITS = {"train": (0, TRAIN_CITIES), "val": (1, VAL_CITIES), "test": (2, TEST_CITIES)}  # (seed stream, cities)
LABELLED = ("train", "val")
FRAME = 19  # Cityscapes' annotated frame of each sequence is number 19
PNG_COMPRESS_LEVEL = 1  # the images are noisy: more compression buys little
MIN_SIZE = (64, 32)

# ----------------------------------------------------------------------------------------------------------- writing


def _plan(num_train: int, num_val: int, num_test: int = 0) -> list[tuple[str, int, str, str]]:
    """(split, index, city, file stem) of every image; cities take turns."""
    plan = []
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        cities = SPLITS[split][1]
        for index in range(count):
            city = cities[index % len(cities)]
            plan.append((split, index, city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"))
    return plan


def _params(num_train: int, num_val: int, size: tuple[int, int], seed: int, num_test: int = 0) -> dict:
    params = {
        "generator": "training.demo_data",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "size": [size[0], size[1]],
        "seed": seed,
    }
    return {**params, "num_test": num_test} if num_test else params  # sets made without a test split stay valid


def _check(num_train, num_val, size, seed, num_test=0) -> tuple[int, int, tuple[int, int], int, int]:
    def count(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DemoDataError(f"{name}: expected a whole number >= 0, got {value!r}")
        return int(value)

    num_train, num_val = count("num_train", num_train), count("num_val", num_val)
    if num_train + num_val == 0:
        raise DemoDataError("num_train + num_val: expected at least one image, got 0")
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DemoDataError(f"size: expected (width, height), got {size!r}") from None
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise DemoDataError(
            f"size: expected at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (width x height), got {width}x{height}"
        )
    return num_train, num_val, (width, height), count("seed", seed), count("num_test", num_test)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _generate(root, num_train, num_val, size, seed, num_test=0) -> tuple[Path, bool, float]:
    """Write the set unless a complete one with these parameters is there: (root, generated?, seconds)."""
    num_train, num_val, size, seed, num_test = _check(num_train, num_val, size, seed, num_test)
    root = Path(root)
    params = _params(num_train, num_val, size, seed, num_test)
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("params") == params:
        return root, False, 0.0
    start = time.perf_counter()
    data_dirs = [root / "leftImg8bit", root / "gtFine"]
    ours = manifest is not None or (root / MARKER_NAME).is_file()
    if any(d.exists() for d in data_dirs) and not ours:
        raise DemoDataError(
            f"{root}: holds leftImg8bit/ or gtFine/ that the demo generator did not write; "
            "expected an empty or new folder for the demo data (nothing was written)"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    (root / MARKER_NAME).write_text("leftImg8bit/ and gtFine/ here were written by demo/dataset.py\n")
    for d in data_dirs:  # an older or partial set: start afresh
        if d.exists():
            shutil.rmtree(d)
    for d in data_dirs:
        for split in LABELLED:
            (d / split).mkdir(parents=True, exist_ok=True)
    width, height = size
    for split, index, city, stem in _plan(num_train, num_val, num_test):
        rng = np.random.default_rng([seed, SPLITS[split][0], index])
        image, label = draw_scene(rng, width, height)
        image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", compress_level=PNG_COMPRESS_LEVEL)
        if split in LABELLED:
            label_dir.mkdir(exist_ok=True)
            Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png", compress_level=PNG_COMPRESS_LEVEL)
    seconds = time.perf_counter() - start
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(
        json.dumps(
            {
                "params": params,
                "layout": "Cityscapes leftImg8bit/ + gtFine/ *_gtFine_labelIds.png",
                "cities": {split: list(SPLITS[split][1]) for split in SPLITS if split in LABELLED or num_test},
            },
            indent=2,
        )
        + "\n"
    )
    os.replace(tmp, root / MANIFEST_NAME)
    return root, True, seconds


def make_demo_dataset(
    root, num_train: int = 60, num_val: int = 20, size: tuple[int, int] = (1024, 512), seed: int = 0, num_test: int = 0
) -> Path:
    """Write `num_train` + `num_val` synthetic scenes of `size` (width, height) under `root` in the Cityscapes layout,
    and `num_test` test images without labels (leftImg8bit/test/ only); train and val do not depend on `num_test`.

    Returns `root` at once, writing nothing, when `root/demo_manifest.json` records the same parameters; an older
    or unfinished set there is replaced. Refuses (DemoDataError) a folder with leftImg8bit/ or gtFine/ of other origin.
    """
    return _generate(root, num_train, num_val, size, seed, num_test)[0]


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
    return {"num_train": 60, "num_val": 20, "size": (1024, 512), "seed": 0}


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise DemoDataError(f"--size: expected WIDTHxHEIGHT such as 1024x512, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo_data",
        description="Write a small synthetic street-scene data set in the Cityscapes "
        "layout (leftImg8bit/ + gtFine/ label ids).",
    )
    parser.add_argument("--root", type=Path, default=DEMO_DIR, help=f"output folder (default {DEMO_DIR})")
    parser.add_argument("--train", type=int, default=60, help="number of training images (default 60)")
    parser.add_argument("--val", type=int, default=20, help="number of validation images (default 20)")
    parser.add_argument(
        "--test",
        type=int,
        default=0,
        help="number of test images, without labels like Cityscapes' test split (default 0)",
    )
    parser.add_argument("--size", default="1024x512", help="image size WIDTHxHEIGHT (default 1024x512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = parser.parse_args(argv)
    size = _parse_size(args.size)
    root, generated, seconds = _generate(args.root, args.train, args.val, size, args.seed, args.test)
    if not generated:
        print(
            f"{root} already holds this demo set ({args.train} train + {args.val} val images, "
            f"{size[0]}x{size[1]}, seed {args.seed}): nothing written"
        )
        return root
    print(f"wrote the demo set to {root} ({size[0]}x{size[1]}, seed {args.seed}) in {seconds:.1f} s:")
    for split in SPLITS:
        if not (root / "leftImg8bit" / split).is_dir():
            continue
        cities = sorted(p.name for p in (root / "leftImg8bit" / split).iterdir())
        counts = {c: len(list((root / "leftImg8bit" / split / c).glob("*_leftImg8bit.png"))) for c in cities}
        total = sum(counts.values())
        print(
            f"  {split}: {total} images + "
            + (f"{total} label maps" if split in LABELLED else "no labels")
            + (f" ({', '.join(f'{c} {n}' for c, n in counts.items())})" if counts else "")
        )
    return root


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
