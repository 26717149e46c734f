"""The command line shared by the training scripts (the original's flags plus the new ones) and its checks."""
from __future__ import annotations

import argparse

from training.errors import UserError
from training.models import ARCHITECTURES


def get_args_parser(description: str, default_profile: str, arch: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--data-dir", default="./data/cityscapes", help="Cityscapes root (leftImg8bit/, gtFine/)")
    add("--batch-size", type=int, default=32, help="images per step and per process (per GPU under torchrun/srun)")
    add("--epochs", type=int, default=100, help="epochs of this stage")
    add("--lr", type=float, default=1e-3, help="AdamW learning rate")
    add("--num-workers", type=int, default=8, help="data-loading worker processes per process")
    add("--seed", type=int, default=42, help="seed of initialisation, data order and augmentation")
    add("--experiment-id", default="fastscnn-training-experiment-01",
        help="names models/<id>.pth, checkpoints/<id>/ and the W&B run")
    add("--profile", default=default_profile, help="resolution profile: name or number 1-5 (see the table in the script)")
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0 = none)")
    add("--lr-schedule", choices=("constant", "poly", "onecycle"), default="constant",
        help="constant (the original), poly (power 0.9, per step) or onecycle")
    add("--grad-clip", type=float, default=0.0, help="clip the gradient norm to this value (0 = off)")
    add("--amp", action="store_true", help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)")
    add("--channels-last", action="store_true", help="channels_last memory format (faster convolutions on GPUs)")
    add("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    add("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto = CUDA when available")
    add("--no-cache", action="store_true", help="always decode the full-size PNGs (no per-profile cache)")
    add("--restart", action="store_true", help="ignore the resumable state in checkpoints/<id>/ and start afresh")
    add("--skip-nonfinite", action="store_true", help="skip steps whose loss is NaN/inf instead of stopping")
    add("--previews", type=int, default=4, help="validation images in the preview PNG at each new best")
    add("--debug", action="store_true", help="show tracebacks for errors")
    if arch:
        add("--arch", default="fast_scnn", choices=ARCHITECTURES, help="architecture to train")
    return parser


def add_previous_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--previous-model-path", "--model-path", dest="init_from", default="none",
                        help="weights of the previous curriculum stage (a .pth state_dict), or 'none' for random init")


def add_dice_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dice-loss-weight", type=float, default=1.0, help="weight of the Dice term")


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--trained-teacher-model-path", required=True, help="the trained teacher's .pth (frozen during the stage)")
    add("--teacher-arch", default="fast_scnn", choices=ARCHITECTURES, help="the teacher's architecture")
    add("--previous-student-model-path", dest="init_from", default="none",
        help="the student of the previous curriculum stage, or 'none' for random init")
    add("--alpha", type=float, default=0.5, help="weight of the distillation term: alpha*kd + (1-alpha)*ce")
    add("--temperature", type=float, default=4.0, help="softmax temperature T (> 1)")
    add("--kd-loss", choices=("kl", "cwd"), default="kl",
        help="kl: per-pixel KL over the classes (the original's term); cwd: channel-wise distillation, each class "
             "channel a distribution over the positions (Shu et al. 2021)")


def check_args(args) -> None:
    """Refuse values that cannot train, before anything is read or written."""
    for flag, value, ok, expected in [
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--epochs", args.epochs, args.epochs >= 1, "an integer >= 1"),
        ("--lr", args.lr, args.lr > 0, "a positive number"),
        ("--num-workers", args.num_workers, args.num_workers >= 0, "an integer >= 0"),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0, "a number >= 0"),
        ("--grad-clip", args.grad_clip, args.grad_clip >= 0, "a number >= 0 (0 = off)"),
        ("--dice-loss-weight", getattr(args, "dice_loss_weight", 0), getattr(args, "dice_loss_weight", 0) >= 0,
         "a number >= 0"),
        ("--alpha", getattr(args, "alpha", 0), 0 <= getattr(args, "alpha", 0) <= 1, "a number in [0, 1]"),
        ("--temperature", getattr(args, "temperature", 2), getattr(args, "temperature", 2) > 1, "a number > 1"),
    ]:
        if not ok:
            raise UserError(f"{flag} {value}: expected {expected}")
    if not str(args.experiment_id) or "/" in str(args.experiment_id):
        raise UserError(f"--experiment-id {args.experiment_id!r}: expected a non-empty name without '/'")
