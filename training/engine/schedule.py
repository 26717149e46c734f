"""A stage's place in its run's learning-rate schedule (--schedule-span, training/engine/optim.py): the record that
the model card and the state keep, the check that a stage continues where the previous stage ended, the log line.

The record (`schedule` in models/<id>.json and in checkpoints/<id>/state.pth):
    kind (--lr-schedule), span [A, B] (None: the stage's own schedule), warmup_fraction, lr and min_lr as given
    (before --lr-scaling), lr_scale (the factor --lr-scaling applied), lr_start and lr_end (the lr of the stage's
    first step and after its last, scaled), steps (the stage's optimizer steps).
A stage of --epochs 0 (BatchNorm recalibration only) takes no step: its record is the one of the model it starts
from, so that the next stage continues that model's schedule.
"""

from __future__ import annotations

import math

from training.engine.optim import Span, stage_lr
from training.engine.state import init_flag
from training.errors import UserError

# the spans the chain computes are fractions of whole numbers of epochs: equal within float rounding
SPAN_TOLERANCE = 1e-9


def schedule_record(args, lr: float, total_steps: int, previous: dict | None = None) -> dict | None:
    """The stage's `schedule` entry (see the module's docstring); `lr` its scaled peak lr, `previous` the entry of
    the model it starts from (its card's)."""
    if args.epochs == 0:
        return previous
    formula = args.lr_schedule != "onecycle"  # torch's OneCycleLR has no formula here
    span = Span.parse(args.schedule_span) if args.schedule_span else None
    return {
        "kind": args.lr_schedule,
        "span": [span.start, span.end] if span else None,
        "warmup_fraction": args.warmup_fraction,
        "lr": args.lr,
        "min_lr": args.min_lr,
        "lr_scale": lr / args.lr,
        "lr_start": stage_lr(0, total_steps, args, lr) if formula else None,
        "lr_end": stage_lr(total_steps, total_steps, args, lr) if formula else None,
        "steps": total_steps,
    }


def check_continuity(args, previous: dict | None) -> None:
    """Refuse (one line) a stage whose span starts at A > 0 unless the model it starts from ended the same schedule
    (kind, lr, min lr, warm-up) at A, as its card records. A = 0 starts a schedule: nothing to continue."""
    if args.schedule_span is None:
        return
    span, text = Span.parse(args.schedule_span), args.schedule_span
    if span.start == 0:
        return
    flag = f"{init_flag(args)} {args.init_from}"
    if str(args.init_from).lower() == "none":
        raise UserError(
            f"--schedule-span {text}: continues a run's schedule at {span.start!r}, but the stage starts from random "
            f"weights (expected 0:B for a run's first stage, or the previous stage's model)"
        )
    if not previous or previous.get("span") is None:
        raise UserError(
            f"--schedule-span {text}: continues a run's schedule at {span.start!r}, but {flag} has no model card "
            f"recording a schedule span (expected the model of a stage trained with --schedule-span A:{span.start!r})"
        )
    end = float(previous["span"][1])
    if abs(end - span.start) > SPAN_TOLERANCE:
        raise UserError(
            f"--schedule-span {text}: starts at {span.start!r}, but {flag} ended its run's schedule at {end!r} "
            f"(its model card); expected --schedule-span {end!r}:B"
        )
    for key, name in (
        ("kind", "lr_schedule"),
        ("lr", "lr"),
        ("min_lr", "min_lr"),
        ("warmup_fraction", "warmup_fraction"),
    ):
        mine, theirs = getattr(args, name), previous.get(key)
        same = mine == theirs if isinstance(mine, str) else theirs is not None and math.isclose(mine, theirs)
        if not same:
            option = "--" + name.replace("_", "-")
            raise UserError(
                f"{option} {mine}: {flag} trained with {option} {theirs} in the schedule this stage continues (its "
                f"model card); expected the same {option} in every stage of one schedule"
            )


def schedule_line(args, lr: float, total_steps: int) -> str:
    """The log's line of the stage's schedule ('' for a constant lr)."""
    if args.lr_schedule == "constant" or args.epochs == 0:
        return ""
    if args.lr_schedule == "onecycle":
        return f"schedule onecycle: max lr {lr:g} over the stage's {total_steps} steps"
    start, end = stage_lr(0, total_steps, args, lr), stage_lr(total_steps, total_steps, args, lr)
    where = f"the part {args.schedule_span} of one schedule over the run" if args.schedule_span else "its own schedule"
    warmup = f", warm-up over the first {args.warmup_fraction:g} of it" if args.warmup_fraction else ""
    return f"schedule {args.lr_schedule} ({where}{warmup}): lr {start:.4g} -> {end:.4g} over {total_steps} steps"
