"""The command line shared by the training scripts (the original's flags plus the new ones) and its checks."""

from __future__ import annotations

import argparse
import sys

from training.data.layouts import DATASETS
from training.engine.optim import OPTIMIZERS, SCHEDULES, SPANNING, Span
from training.engine.recipes import LR_SCALINGS, PHOTOMETRIC_MAX, RECIPES, SCALE_MAX, parse_scale_range
from training.errors import UserError
from training.losses import KD_LOSSES
from training.models.build import ARCHITECTURES

# Temperatures of published distillation settings: CWD on Cityscapes 1 (Shu et al. 2021), DIST 1, KL 1-10 (the
# original 4); outside these a stage trains, with a warning.
TEMPERATURE_USUAL = (1.0, 10.0)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def get_args_parser(description: str, default_profile: str, arch: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_stage_flags(parser.add_argument_group("the stage"), default_profile)
    _add_optimisation_flags(parser.add_argument_group("optimisation"))
    _add_augmentation_flags(parser.add_argument_group("augmentation and regularisation"))
    _add_runtime_flags(parser.add_argument_group("runtime"))
    if arch:
        parser.add_argument("--arch", default="fast_scnn", choices=ARCHITECTURES, help="architecture to train")
    return parser


def _add_stage_flags(group, default_profile: str) -> None:
    """Flags of the data set, the stage's size and names, where its files go."""
    add = group.add_argument
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


def _add_optimisation_flags(group) -> None:
    """Flags of the recipe, the optimizer and the learning-rate schedule."""
    add = group.add_argument
    add(
        "--recipe",
        choices=tuple(RECIPES),
        default="original",
        help="values of the flags below left unset: original (the course project's) or mmseg (see docs/training.md)",
    )
    add("--weight-decay", type=float, default=None, help="weight decay, 0 = none (from --recipe: 0; mmseg 4e-5)")
    add("--optimizer", choices=OPTIMIZERS, default=None, help="from --recipe: original adamw; mmseg sgd")
    add("--momentum", type=float, default=None, help="SGD momentum (from --recipe: 0.9)")
    add(
        "--lr-schedule",
        choices=SCHEDULES,
        default=None,
        help="constant, poly (power 0.9), linear (to --min-lr), cosine (to --min-lr), stepped per step, or onecycle "
        "(from --recipe: original constant; mmseg poly)",
    )
    add("--min-lr", type=float, default=None, help="the schedule's final lr (from --recipe: 0; mmseg 1e-4)")
    add(
        "--warmup-steps",
        type=int,
        default=None,
        help="steps of linear warm-up at the stage's start, from a tenth of the lr (from --recipe: 0)",
    )
    add(
        "--schedule-span",
        default=None,
        metavar="A:B",
        help="this stage is the part [A, B] (0 <= A < B <= 1) of one poly/linear/cosine schedule over the whole run: "
        "the stage continues the lr where the previous stage (A > 0: its model card) ended; default: the stage "
        "runs its own schedule (the original runs)",
    )
    add(
        "--warmup-fraction",
        type=float,
        default=0.0,
        help="linear warm-up over this fraction of the schedule (of the whole run with --schedule-span: once, at "
        "its start), from a tenth of the lr",
    )
    add(
        "--lr-scaling",
        choices=LR_SCALINGS,
        default="none",
        help="scale --lr and --min-lr with the batch: linear (x total batch / --reference-batch-size) or pixels "
        "(x pixels per total batch / those of --reference-batch-size patches of profile 1)",
    )
    add(
        "--reference-batch-size",
        type=int,
        default=32,
        help="the total batch at which --lr is given, for --lr-scaling",
    )


def _add_augmentation_flags(group) -> None:
    """Flags of per-stage augmentation, regularisation, the test-resolution stage."""
    add = group.add_argument
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
    add(
        "--scale-range",
        default=None,
        metavar="LO,HI",
        help="random rescale of the resized image by a ratio uniform in [LO, HI] before the crop (padded with void "
        "where smaller than the patch); default: --augment's own (original 1,1 = none; mmseg 0.5,2)",
    )
    add(
        "--photometric-strength",
        type=float,
        default=None,
        help="multiplier of the colour augmentation's ranges: 1 = --augment's own (original: jitter 0.3/0.3/0.3/0.1), "
        "0 = none (default 1; 0 with --whole-images)",
    )
    add("--dropout", type=float, default=None, help="dropout before Fast-SCNN's classifier (default: the model's 0.1)")
    add(
        "--whole-images",
        action="store_true",
        help="train on whole images at the profile's image size: no crop, no rescale, no colour augmentation, "
        "flip only (a test-resolution stage; logs the validation mIoU of the starting model first)",
    )
    add(
        "--bn-recalibrate",
        type=int,
        default=0,
        metavar="N",
        help="before the stage's epochs, re-estimate the BatchNorm statistics from N training batches (forward passes "
        "in train mode without gradients) and log the validation mIoU before and after; with --epochs 0 the stage "
        "does only that",
    )


def _add_runtime_flags(group) -> None:
    """Flags of speed, caching, failures, validation and the chain's labels."""
    add = group.add_argument
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
        choices=KD_LOSSES,
        default="kl",
        help="kl: per-pixel KL over the classes (the original's term); cwd: channel-wise distillation, each class "
        "channel a distribution over the positions (Shu et al. 2021); dist: DIST, Pearson correlation of the "
        "class probabilities across classes and across pixels (Huang et al. 2022)",
    )
    add("--dist-beta", type=float, default=1.0, help="DIST's weight of the inter-class term (--kd-loss dist)")
    add("--dist-gamma", type=float, default=1.0, help="DIST's weight of the intra-class term (--kd-loss dist)")


def check_args(args, warn=None) -> None:
    """Refuse values that cannot train, before anything is read or written; `warn(line)` (default: a `warning:` line
    on stderr) hears of values that train but are unusual. Texts of several numbers (--schedule-span,
    --scale-range) are rewritten in one canonical form, the form the state and the card record."""
    recalibrate_only = args.epochs == 0 and getattr(args, "bn_recalibrate", 0) >= 1
    for flag, value, ok, expected in [
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        (
            "--epochs",
            args.epochs,
            args.epochs >= 1 or recalibrate_only,
            "an integer >= 1 (0 only with --bn-recalibrate N: a stage that only recalibrates BatchNorm)",
        ),
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
    _check_schedule(args)
    _check_regularisation(args)
    _check_distillation(args, warn or _warn)
    if args.aux_weight > 0 and getattr(args, "arch", "fast_scnn") != "fast_scnn":
        raise UserError(
            f"--aux-weight {args.aux_weight:g}: auxiliary heads exist in fast_scnn only, not in "
            f"--arch {args.arch} (expected --aux-weight 0)"
        )
    if not str(args.experiment_id) or "/" in str(args.experiment_id):
        raise UserError(f"--experiment-id {args.experiment_id!r}: expected a non-empty name without '/'")


def _check_schedule(args) -> None:
    """--schedule-span, --warmup-fraction, --reference-batch-size (args without them: a caller's own namespace)."""
    spanning = ", ".join(SPANNING)
    fraction = getattr(args, "warmup_fraction", 0.0)
    if not 0 <= fraction < 1:
        raise UserError(f"--warmup-fraction {fraction}: expected a number in [0, 1)")
    if fraction > 0 and args.lr_schedule not in SPANNING:
        raise UserError(
            f"--warmup-fraction {fraction}: a warm-up needs --lr-schedule {spanning} (got {args.lr_schedule})"
        )
    if fraction > 0 and args.warmup_steps > 0:
        raise UserError(
            f"--warmup-steps {args.warmup_steps}: expected 0 with --warmup-fraction {fraction} (one warm-up: give one)"
        )
    if getattr(args, "reference_batch_size", 1) < 1:
        raise UserError(f"--reference-batch-size {args.reference_batch_size}: expected an integer >= 1")
    text = getattr(args, "schedule_span", None)
    if text is None:
        return
    try:
        span = Span.parse(text)
    except ValueError:
        span = None
    if span is None or not 0 <= span.start < span.end <= 1:
        raise UserError(f"--schedule-span {text}: expected A:B with 0 <= A < B <= 1, e.g. 0.2:0.4")
    args.schedule_span = span.text()
    if args.lr_schedule not in SPANNING:
        raise UserError(
            f"--schedule-span {text}: expected --lr-schedule {spanning} (got {args.lr_schedule}, which cannot span "
            f"the stages of a run)"
        )
    if args.warmup_steps > 0:
        raise UserError(
            f"--warmup-steps {args.warmup_steps}: expected 0 with --schedule-span (the run's warm-up is "
            f"--warmup-fraction, a fraction of the whole run)"
        )
    if args.epochs == 0:
        raise UserError(f"--schedule-span {text}: a stage of --epochs 0 takes no step (expected no --schedule-span)")


def _check_regularisation(args) -> None:
    """--scale-range, --photometric-strength, --dropout, --whole-images, --bn-recalibrate (as resolved by
    training.engine.recipes.resolve_regularisation)."""
    text = getattr(args, "scale_range", None)
    if text is not None:
        try:
            low, high = parse_scale_range(text)
        except ValueError:
            low = high = None
        if low is None or not 0 < low <= high <= SCALE_MAX:
            raise UserError(f"--scale-range {text}: expected LO,HI with 0 < LO <= HI <= {SCALE_MAX:g}, e.g. 0.5,2")
        args.scale_range = f"{low!r},{high!r}"
        if getattr(args, "whole_images", False) and (low, high) != (1.0, 1.0):
            raise UserError(f"--scale-range {text}: expected 1,1 with --whole-images (whole images: flip only)")
    strength = getattr(args, "photometric_strength", None)
    if strength is not None:
        most = PHOTOMETRIC_MAX[args.augment]
        if not 0 <= strength <= most:
            raise UserError(
                f"--photometric-strength {strength}: expected a number in [0, {most:g}] for --augment {args.augment}"
            )
        if getattr(args, "whole_images", False) and strength != 0:
            raise UserError(
                f"--photometric-strength {strength}: expected 0 with --whole-images (whole images: flip only)"
            )
    dropout = getattr(args, "dropout", None)
    if dropout is not None:
        if not 0 <= dropout < 1:
            raise UserError(f"--dropout {dropout}: expected a number in [0, 1)")
        if getattr(args, "arch", "fast_scnn") != "fast_scnn":
            raise UserError(f"--dropout {dropout}: sets Fast-SCNN's classifier dropout, not --arch {args.arch}'s")
    if getattr(args, "bn_recalibrate", 0) < 0:
        raise UserError(f"--bn-recalibrate {args.bn_recalibrate}: expected an integer >= 0 (batches; 0 = off)")


def _check_distillation(args, warn) -> None:
    """--temperature (a warning outside the published settings), --dist-beta, --dist-gamma."""
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not TEMPERATURE_USUAL[0] <= temperature <= TEMPERATURE_USUAL[1]:
        warn(
            f"--temperature {temperature:g} is unusual for --kd-loss {getattr(args, 'kd_loss', 'kl')} (published "
            f"settings lie in {TEMPERATURE_USUAL[0]:g}-{TEMPERATURE_USUAL[1]:g}; below 1 sharpens the softened "
            f"distributions, far above flattens them towards uniform)"
        )
    if not hasattr(args, "dist_beta"):
        return
    for flag, value in (("--dist-beta", args.dist_beta), ("--dist-gamma", args.dist_gamma)):
        if not value >= 0:
            raise UserError(f"{flag} {value}: expected a number >= 0")
        if args.kd_loss != "dist" and value != 1.0:
            raise UserError(f"{flag} {value}: a weight of --kd-loss dist (expected --kd-loss dist, or no {flag})")
    if args.kd_loss == "dist" and args.dist_beta + args.dist_gamma == 0:
        raise UserError("--dist-beta 0 --dist-gamma 0: expected at least one of them > 0 (else DIST is off)")
