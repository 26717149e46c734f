"""The optimizer and the learning-rate schedule of a stage, built from its (recipe-resolved) arguments.

Optimizers: AdamW (the original's) or SGD with momentum (the references that reach Fast-SCNN's published accuracy).
Schedules, stepped once per optimizer step:
  constant   the lr throughout (the original)
  poly       lr(u) = (lr - min_lr) * (1 - u)^0.9 + min_lr (mmsegmentation's poly; with min_lr 0 and no warm-up it is
             torch's PolynomialLR)
  linear     lr(u) = (lr - min_lr) * (1 - u) + min_lr: linear to min_lr (0 by default), as budgeted training decays
  cosine     lr(u) = (lr - min_lr) * (1 + cos(pi u)) / 2 + min_lr
  onecycle   torch's OneCycleLR with max_lr = lr, over the stage's own steps
u in [0, 1] is the position in the schedule. Without --schedule-span a stage is the whole schedule: u = t / T at its
step t of T. With --schedule-span A:B the stage is the part [A, B] of one schedule that spans the whole run (the
curriculum's stages one after another): u = A + (B - A) t / T, so stage k+1 (A = stage k's B) starts at the lr
where stage k ended. Warm-up, linear from WARMUP_START_FACTOR of the scheduled lr to all of it (mmcv's linear
warm-up): over the first --warmup-fraction of the schedule (of the run, with a span: once, at the run's start), or
over the stage's first --warmup-steps steps (a stage without a span only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLY_POWER = 0.9
WARMUP_START_FACTOR = 0.1  # the warm-up's first step trains at a tenth of the scheduled lr (mmcv's warmup_ratio)
OPTIMIZERS = ("adamw", "sgd")
SPANNING = ("poly", "linear", "cosine")  # the schedules a run may span (--schedule-span)
SCHEDULES = ("constant", *SPANNING, "onecycle")


def build_optimizer(parameters, args, lr: float | None = None) -> torch.optim.Optimizer:
    """fused=True: one kernel for all parameters, and the optimizer takes a `found_inf` flag that skips a non-finite
    step on the device (training/engine/step_monitor.py). `lr`: the stage's lr after --lr-scaling (default args.lr)."""
    lr = args.lr if lr is None else lr
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            parameters, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=True
        )
        if args.momentum > 0:
            # Fused SGD allocates its momentum buffers uninitialised on its first step and fills them only if that
            # step is applied: a skipped first step (found_inf) would leave garbage for the next. Zero buffers give
            # the same first update (buffer = momentum * 0 + gradient, with no dampening) and are always defined.
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(
                        parameter, memory_format=torch.preserve_format
                    )
        return optimizer
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=args.weight_decay, fused=True)


def decay(kind: str, u: float) -> float:
    """The schedule's shape at position u in [0, 1]: 1 at the start, 0 at the end (constant: 1 throughout)."""
    u = min(max(u, 0.0), 1.0)
    if kind == "poly":
        return (1.0 - u) ** POLY_POWER
    if kind == "linear":
        return 1.0 - u
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    if kind == "constant":
        return 1.0
    raise ValueError(f"schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")


def warmup_factor(position: float, length: float) -> float:
    """The warm-up's factor at `position` of a warm-up of `length` (steps, or fractions of the schedule)."""
    if position >= length:
        return 1.0
    return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * position / length


def schedule_lr(kind: str, u: float, lr: float, min_lr: float = 0.0, warmup_fraction: float = 0.0) -> float:
    """The learning rate at position u of the schedule `kind` (the whole run's, with a span)."""
    return ((lr - min_lr) * decay(kind, u) + min_lr) * warmup_factor(u, warmup_fraction)


@dataclass(frozen=True)
class Span:
    """The part [start, end] of the schedule that a stage covers (0:1, the whole schedule, without --schedule-span)."""

    start: float = 0.0
    end: float = 1.0

    @classmethod
    def parse(cls, text: str | None) -> Span:
        """'A:B' -> Span(A, B); None -> the whole schedule. ValueError for anything else."""
        if text is None:
            return cls()
        start, end = (float(part) for part in str(text).split(":"))
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(text)
        return cls(start, end)

    def text(self) -> str:
        return f"{self.start!r}:{self.end!r}"

    def position(self, step: int, total_steps: int) -> float:
        """u at the stage's step `step` of `total_steps`."""
        return self.start + (self.end - self.start) * min(step, total_steps) / max(total_steps, 1)


def poly_lr(
    step: int, total_steps: int, lr: float, min_lr: float = 0.0, warmup_steps: int = 0, power: float = POLY_POWER
) -> float:
    """The learning rate of step `step` (0-based) of the poly schedule over a stage's own steps."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return ((lr - min_lr) * (1.0 - progress) ** power + min_lr) * warmup_factor(step, warmup_steps)


def stage_lr(step: int, total_steps: int, args, lr: float | None = None) -> float:
    """The lr of the stage's step `step` (0-based) of `total_steps` under args' schedule, span and warm-up; `lr` the
    stage's peak lr (after --lr-scaling; default args.lr), min_lr scaled with it."""
    peak = args.lr if lr is None else lr
    if args.lr_schedule == "constant":  # no warm-up either (as before)
        return peak
    floor = args.min_lr * peak / args.lr
    u = Span.parse(getattr(args, "schedule_span", None)).position(step, total_steps)
    value = schedule_lr(args.lr_schedule, u, peak, floor, getattr(args, "warmup_fraction", 0.0) or 0.0)
    return value * warmup_factor(step, args.warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, args, total_steps: int, lr: float | None = None):
    """The stage's scheduler over its `total_steps` steps; `lr` the peak lr the optimizer was built with."""
    if args.lr_schedule == "onecycle":
        peak = args.lr if lr is None else lr
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=max(total_steps, 1))
    if args.lr_schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

    def factor(step: int) -> float:  # relative to the optimizer's lr: the same for any --lr-scaling
        return stage_lr(step, total_steps, args, lr=1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
