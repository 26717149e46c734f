"""The flags predict.py and evaluate_efficiency.py share, defined once: the model, the device, the export."""

from __future__ import annotations

import argparse

from training.data.layouts import DATASETS
from training.evaluation.trained import DEFAULT_PROFILE
from training.models.build import ARCHITECTURES


def add_model_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """--model-path (alias --current-model-path), --arch, --profile, --device, --threads, --debug."""
    add = parser.add_argument
    add(
        "--model-path",
        "--current-model-path",
        dest="model",
        help="the trained model's .pth state_dict; its card models/<id>.json beside it gives the classes and profile",
    )
    add(
        "--arch",
        choices=ARCHITECTURES,
        help="architecture of the model" + ("(s)" if many else "") + " (default: its card's, else fast_scnn)",
    )
    add(
        "--profile",
        help="the profile (name or 1-5) to run the model at; default: the one its model card records, without a "
        f"card '{DEFAULT_PROFILE}' (with a note)",
    )
    add("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto = CUDA when available")
    add("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    add("--debug", action="store_true", help="show tracebacks for errors")


def add_data_arguments(parser: argparse.ArgumentParser, data_dir_help: str) -> None:
    """--dataset (default: the model card's) and --data-dir (default ./data/<dataset>)."""
    add = parser.add_argument
    add(
        "--dataset",
        choices=DATASETS,
        help="the data set's layout (default: the one the model card records, else cityscapes); its classes must be "
        "the model's",
    )
    add("--data-dir", help=data_dir_help + " (default ./data/<dataset>, e.g. ./data/cityscapes)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's export: --export-predictions, --split, --overlay, --images, --data-dir."""
    add = parser.add_argument
    add(
        "--export-predictions",
        metavar="DIR",
        help="write label-id PNGs of every image of --split (the test server's format) to DIR/<city>/ and score "
        "them where the split has labels",
    )
    add("--split", default="val", choices=("val", "test"), help="the split --export-predictions predicts")
    add(
        "--overlay",
        nargs="?",
        const="",
        metavar="DIR",
        help="colour overlays of the predictions: with --export-predictions in DIR (default: <export dir>_overlay); "
        "with --input (written unless --no-overlay) in DIR instead of beside the predictions",
    )
    add("--images", metavar="FOLDER", help="with --export-predictions: predict every PNG/JPEG under FOLDER instead")


TTA_HELP = (
    "test-time augmentation: none, flip (with the mirror image), multiscale (mmseg's ratios 0.5-1.75 of the "
    "profile size, each with its mirror)"
)
