"""evaluate_efficiency.py's command line: its flags (the model flags shared with predict.py come from
training/evaluation/cli.py) and their checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.efficiency import deploy
from training.efficiency.measure import parse_resolution
from training.efficiency.sheet import EFFICIENCY_CSV, RESOLUTIONS_CSV
from training.errors import UserError
from training.evaluation.cli import add_data_arguments, add_export_arguments, add_model_arguments
from training.evaluation.tta import TTA_MODES
from training.profiles import resolve_profile


def _measuring_arguments(add) -> None:
    add("--batch-size", type=int, default=4, help="validation batch size (latency is always batch 1)")
    add("--num-workers", type=int, default=4, help="data-loading worker processes")
    add(
        "--deploy-dtype",
        default="auto",
        choices=deploy.DEPLOY_CHOICES,
        help="auto: fp16 on CUDA, bf16 autocast on CPUs with native bf16, else fp32, stepping down to mixed (reduced "
        "precision in the context branch only), then fp32, while predictions change; any other value is used as is",
    )
    add(
        "--compile",
        action="store_true",
        help="torch.compile the deploy form with frozen weights (oneDNN conv + ReLU/add fusion on CPU, CUDA graphs on "
        "CUDA); needs a C++ compiler on CPU",
    )
    add("--latency-runs", type=int, default=50, help="at least this many timed runs per form")
    add("--min-seconds", type=float, default=5.0, help="... adding up to at least this many seconds per form")
    add("--warmup", type=int, default=5, help="untimed runs per form first")
    add("--agreement-images", type=int, default=4, help="val images (or random inputs) for the deploy check")
    add(
        "--export-onnx",
        metavar="PATH",
        help="write the fp32 network (BatchNorm folded) as ONNX at the first --resolution (static shape), check it "
        "with ONNX Runtime against PyTorch and time it beside the plain and deploy forms",
    )
    add(
        "--val-resolution",
        choices=("full", "profile"),
        default="full",
        help="score at the labels' own resolution (full: the benchmark's protocol) or at the profile's image size",
    )
    add(
        "--tta",
        nargs="+",
        default=["none"],
        choices=TTA_MODES,
        help="test-time augmentation of the accuracy, one row each: none, flip (with the mirror image), multiscale "
        "(mmseg's ratios 0.5-1.75 of the profile size, each with its mirror); latency is always single-scale",
    )


def get_args_parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_model_arguments(parser, many=True)
    add("--all", metavar="DIR", help="evaluate every .pth in DIR (sorted by name) into one table")
    add_data_arguments(parser, "the data set whose val split scores the accuracy, or 'none' (cost and latency only)")
    add("--resolution", action="append", default=[], help="extra latency size HxW, e.g. 1024x2048 (repeatable)")
    _measuring_arguments(add)
    add_export_arguments(parser)  # forwarded to predict.py's code
    add("--output-dir", default=".", help="where measurements/ goes (default: the current folder)")
    add("--output-csv", help=f"append one row per model and resolution here (default: <output-dir>/{EFFICIENCY_CSV})")
    add(
        "--write-resolutions",
        nargs="?",
        const="",
        metavar="PATH",
        help=f"regenerate resolutions.csv from training/profiles.py and exit (default: <output-dir>/{RESOLUTIONS_CSV})",
    )
    add("--malloc", default="tuned", choices=("tuned", "system"), help="glibc malloc: tuned (fast) or as started")
    return parser


def check_args(args) -> None:
    """The numbers in range, one model or --all, and the ONNX export of one model."""
    for flag, value, low in (
        ("--latency-runs", args.latency_runs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--warmup", args.warmup, 0),
        ("--num-workers", args.num_workers, 0),
        ("--threads", args.threads, 0),
        ("--agreement-images", args.agreement_images, 1),
    ):
        if value < low:
            raise UserError(f"{flag} {value}: expected an integer >= {low}")
    if bool(args.model) == bool(args.all):
        raise UserError("expected exactly one of --current-model-path FILE (or --model-path) or --all DIR")
    if args.export_onnx and args.all:
        raise UserError("--export-onnx: expected one model (--current-model-path), not --all")
    if args.profile:
        resolve_profile(args.profile)
    for text in args.resolution:
        parse_resolution(text)


def with_data(args) -> bool:
    """Whether the accuracy is scored: unless --data-dir none (no --data-dir: ./data/<the model's data set>)."""
    return args.data_dir is None or str(args.data_dir).lower() != "none"


def output_paths(args) -> tuple[Path, Path]:
    """The efficiency sheet and resolutions.csv, rooted at --output-dir unless given as paths."""
    root = Path(args.output_dir)
    csv = Path(args.output_csv) if args.output_csv else root / EFFICIENCY_CSV
    resolutions = Path(args.write_resolutions) if args.write_resolutions else root / RESOLUTIONS_CSV
    return csv, resolutions
