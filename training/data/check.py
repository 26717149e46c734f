"""`python -m training.data.check --dataset camvid --data-dir data/camvid`: check a data set before training on it.

Reads the layout and the class set, pairs every image with its mask of the same size, reads every mask (so an
undeclared value shows now, not an hour into a job), and prints per split the number of pairs and the share of
pixels per class, then the profile sizes for the data set's native size (`training.profiles.scale_profile`).
Bad input: one `error:` line, exit code 2.
"""

from __future__ import annotations

import argparse

import numpy as np

from training.data.classes import describe
from training.data.layouts import DATASETS, Layout, check_sizes, open_dataset
from training.errors import run_cli
from training.profiles import PROFILES, resolve_profile


def pixel_counts(layout: Layout, split: str) -> tuple[int, np.ndarray]:
    """(number of pairs, pixels per train id as int64[256]) of a labelled split; reads every mask."""
    pairs = layout.pairs(split)
    counts = np.zeros(256, dtype=np.int64)
    for pair in pairs:
        check_sizes(pair)
        counts += np.bincount(layout.read_mask(pair.mask).ravel(), minlength=256)
    return len(pairs), counts


def class_shares(layout: Layout, counts: np.ndarray) -> str:
    total = counts.sum()
    shares = [f"{name} {100 * counts[i] / total:.1f}%" for i, name in enumerate(layout.classes.names)]
    return ", ".join(shares) + f", void {100 * counts[layout.classes.ignore_index] / total:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.data.check", description=__doc__.split("\n\n")[1])
    parser.add_argument("--dataset", choices=DATASETS, default="cityscapes", help="the data set's layout")
    parser.add_argument("--data-dir", required=True, help="the data set's root folder")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="labelled splits to check")
    parser.add_argument("--debug", action="store_true", help="a traceback on errors")
    args = parser.parse_args(argv)
    layout = open_dataset(args.dataset, args.data_dir)
    print(describe(layout.classes))
    for split in args.splits:
        count, pixels = pixel_counts(layout, split)
        print(f"{split}: {count} images with masks; pixels: {class_shares(layout, pixels)}")
    (width, height), own = layout.native_size(), layout.name == "cityscapes"
    print(f"profiles ({'Cityscapes: the table as written' if own else f'native size {width}x{height}'}):")
    for name in PROFILES:
        print(f"  {layout.profile(resolve_profile(name)).describe()}")


if __name__ == "__main__":
    run_cli(main)
