"""The command line shared by the training scripts (the original's flags plus the new ones) and its checks."""

from __future__ import annotations

import argparse
import sys

from training.data.layouts import DATASETS
from training.engine.optim import OPTIMIZERS, SCHEDULES
from training.engine.recipes import RECIPES
from training.errors import UserError
from training.models.build import ARCHITECTURES

# Temperatures of published distillation settings: CWD on Cityscapes 1 (Shu et al. 2021), DIST 1, KL 1-10 (the
# original 4); outside these a stage trains, with a warning.
TEMPERATURE_USUAL = (1.0, 10.0)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def get_args_parser(description: str, default_profile: str, arch: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add(
        "--dataset",
        choices=DATASETS,
        default="cityscapes",
        help="the data set's layout and classes: cityscapes, camvid (SegNet's 11 classes) or folder (images/, "
        "masks/, classes.json); see docs/datasets.md",
    )
    add("--data-dir", default=None, help="the data set's root (default ./data/<dataset>, e.g. ./data/cityscapes)")
    add("--batch-size", type=int, default=32, help="images per step and per process (per GPU under torchrun/srun)")
    add("--epochs", type=int, default=100, help="epochs of this stage")
    add(
        "--lr",
        type=float,
        default=None,
        help="learning rate (from --recipe: original 1e-3; mmseg 0.12 x total batch / 32)",
    )
    add("--num-workers", type=int, default=8, help="data-loading worker processes per process")
    add("--seed", type=int, default=42, help="seed of initialisation, data order and augmentation")
    add(
        "--experiment-id",
        default="fastscnn-training-experiment-01",
        help="names models/<id>.pth, checkpoints/<id>/ and the W&B run",
    )
    add(
        "--output-dir",
        default=".",
        help="folder that holds the stage's models/, checkpoints/ and measurements/ (the current folder by default); "
        "relative paths given to other flags, e.g. --previous-model-path, stay relative to the current folder",
    )
    add(
        "--profile",
        default=default_profile,
        help="resolution profile: name or number 1-5 (see the table in the script)",
    )
    add(
        "--recipe",
        choices=tuple(RECIPES),
        default="original",
        help="values of the flags below left unset: original (the course project's) or mmseg (see README.md)",
    )
    add("--weight-decay", type=float, default=None, help="weight decay, 0 = none (from --recipe: 0; mmseg 4e-5)")
    add("--optimizer", choices=OPTIMIZERS, default=None, help="from --recipe: original adamw; mmseg sgd")
    add("--momentum", type=float, default=None, help="SGD momentum (from --recipe: 0.9)")
    add(
        "--lr-schedule",
        choices=SCHEDULES,
        default=None,
        help="constant, poly (power 0.9, per step, with --min-lr and --warmup-steps) or onecycle "
        "(from --recipe: original constant; mmseg poly)",
    )
    add("--min-lr", type=float, default=None, help="the poly schedule's final lr (from --recipe: 0; mmseg 1e-4)")
    add(
        "--warmup-steps",
        type=int,
        default=None,
        help="steps of linear warm-up of the poly schedule, from a tenth of the lr (from --recipe: 0)",
    )
    add(
        "--aux-weight",
        type=float,
        default=None,
        help="cross-entropy weight of each of Fast-SCNN's two auxiliary heads, 0 = off (from --recipe: 0; mmseg 0.4)",
    )
    add(
        "--augment",
        choices=("original", "mmseg"),
        default=None,
        help="original: resize, flip, crop, colour jitter; mmseg: random rescale 0.5-2, crop with cat_max_ratio "
        "0.75, void padding, flip, photometric distortion (from --recipe)",
    )
    add("--grad-clip", type=float, default=0.0, help="clip the gradient norm to this value (0 = off)")
    add(
        "--amp",
        action="store_true",
        help="mixed precision on CUDA (bf16 where the GPU has native bf16, else fp16 with loss scaling)",
    )
    add("--channels-last", action="store_true", help="channels_last memory format (faster convolutions on GPUs)")
    add("--compile", action="store_true", help="torch.compile the model for training (slower start, faster steps)")
    add("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    add("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto = CUDA when available")
    add("--no-cache", action="store_true", help="always decode the full-size PNGs (no per-profile cache)")
    add(
        "--cache-dir",
        default=None,
        help="where the per-profile cache goes, one folder per data set inside (default: $FASTSCNN_CACHE_DIR, else "
        "<data dir>/.cache, else ./data/cache); a cache that does not fit there is refused before it is built",
    )
    add("--restart", action="store_true", help="ignore the resumable state in checkpoints/<id>/ and start afresh")
    add("--skip-nonfinite", action="store_true", help="skip steps whose loss is NaN/inf instead of stopping")
    add(
        "--val-resolution",
        choices=("full", "profile"),
        default="full",
        help="score validation at the labels' own resolution (full: the benchmark's protocol, what selects the best "
        "model) or at the profile's image size (profile: cheaper, not comparable with published figures)",
    )
    add("--previews", type=int, default=4, help="validation images in the preview PNG at each new best")
    add("--debug", action="store_true", help="show tracebacks for errors")
    add("--run", default=None, help="the run this stage belongs to (runs/<run>.toml); set by the chain, recorded")
    add("--stage", type=int, default=None, help="the stage's number in its run; set by the chain, recorded")
    if arch:
        add("--arch", default="fast_scnn", choices=ARCHITECTURES, help="architecture to train")
    return parser


def add_previous_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--previous-model-path",
        "--model-path",
        dest="init_from",
        default="none",
        help="weights of the previous curriculum stage (a .pth state_dict), or 'none' for random init",
    )


def add_dice_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dice-loss-weight", type=float, default=1.0, help="weight of the Dice term")


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--trained-teacher-model-path", required=True, help="the trained teacher's .pth (frozen during the stage)")
    add("--teacher-arch", default="fast_scnn", choices=ARCHITECTURES, help="the teacher's architecture")
    add(
        "--previous-student-model-path",
        dest="init_from",
        default="none",
        help="the student of the previous curriculum stage, or 'none' for random init",
    )
    add("--alpha", type=float, default=0.5, help="weight of the distillation term: alpha*kd + (1-alpha)*ce")
    add(
        "--temperature",
        type=float,
        default=4.0,
        help=f"softmax temperature T > 0 (warned outside {TEMPERATURE_USUAL[0]:g}-{TEMPERATURE_USUAL[1]:g})",
    )
    add(
        "--kd-loss",
        choices=("kl", "cwd"),
        default="kl",
        help="kl: per-pixel KL over the classes (the original's term); cwd: channel-wise distillation, each class "
        "channel a distribution over the positions (Shu et al. 2021)",
    )


def check_args(args, warn=None) -> None:
    """Refuse values that cannot train, before anything is read or written; `warn(line)` (default: a `warning:` line
    on stderr) hears of values that train but are unusual."""
    for flag, value, ok, expected in [
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--epochs", args.epochs, args.epochs >= 1, "an integer >= 1"),
        ("--lr", args.lr, args.lr > 0, "a positive number"),
        ("--num-workers", args.num_workers, args.num_workers >= 0, "an integer >= 0"),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0, "a number >= 0"),
        ("--momentum", args.momentum, 0 <= args.momentum < 1, "a number in [0, 1)"),
        ("--min-lr", args.min_lr, 0 <= args.min_lr <= args.lr, f"a number in [0, --lr {args.lr:g}]"),
        ("--warmup-steps", args.warmup_steps, args.warmup_steps >= 0, "an integer >= 0"),
        ("--aux-weight", args.aux_weight, args.aux_weight >= 0, "a number >= 0 (0 = off)"),
        ("--grad-clip", args.grad_clip, args.grad_clip >= 0, "a number >= 0 (0 = off)"),
        (
            "--dice-loss-weight",
            getattr(args, "dice_loss_weight", 0),
            getattr(args, "dice_loss_weight", 0) >= 0,
            "a number >= 0",
        ),
        ("--alpha", getattr(args, "alpha", 0), 0 <= getattr(args, "alpha", 0) <= 1, "a number in [0, 1]"),
        ("--temperature", getattr(args, "temperature", 1), getattr(args, "temperature", 1) > 0, "a number > 0"),
    ]:
        if not ok:
            raise UserError(f"{flag} {value}: expected {expected}")
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not TEMPERATURE_USUAL[0] <= temperature <= TEMPERATURE_USUAL[1]:
        (warn or _warn)(
            f"--temperature {temperature:g} is unusual for --kd-loss {getattr(args, 'kd_loss', 'kl')} (published "
            f"settings lie in {TEMPERATURE_USUAL[0]:g}-{TEMPERATURE_USUAL[1]:g}; below 1 sharpens the softened "
            f"distributions, far above flattens them towards uniform)"
        )
    if args.aux_weight > 0 and getattr(args, "arch", "fast_scnn") != "fast_scnn":
        raise UserError(
            f"--aux-weight {args.aux_weight:g}: auxiliary heads exist in fast_scnn only, not in "
            f"--arch {args.arch} (expected --aux-weight 0)"
        )
    if not str(args.experiment_id) or "/" in str(args.experiment_id):
        raise UserError(f"--experiment-id {args.experiment_id!r}: expected a non-empty name without '/'")
