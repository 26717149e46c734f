"""The optimizer and the learning-rate schedule of a stage, built from its (recipe-resolved) arguments.

Optimizers: AdamW (the original's) or SGD with momentum (the references that reach Fast-SCNN's published accuracy).
Schedules, stepped once per optimizer step:
  constant   the lr throughout (the original)
  poly       lr(t) = (lr - min_lr) * (1 - t / T)^0.9 + min_lr over the stage's T steps (mmsegmentation's poly; with
             min_lr 0 it is torch's PolynomialLR), times a linear warm-up factor over the first --warmup-steps steps
             that rises from WARMUP_START_FACTOR to 1 (as mmcv's linear warm-up)
  onecycle   torch's OneCycleLR with max_lr = lr
"""

from __future__ import annotations

import torch

POLY_POWER = 0.9
WARMUP_START_FACTOR = 0.1  # the warm-up's first step trains at a tenth of the scheduled lr (mmcv's warmup_ratio)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "poly", "onecycle")


def build_optimizer(parameters, args) -> torch.optim.Optimizer:
    """fused=True: one kernel for all parameters, and the optimizer takes a `found_inf` flag that skips a non-finite
    step on the device (training/engine/step_monitor.py)."""
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=True
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
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay, fused=True)


def poly_lr(
    step: int, total_steps: int, lr: float, min_lr: float = 0.0, warmup_steps: int = 0, power: float = POLY_POWER
) -> float:
    """The learning rate of step `step` (0-based) of the poly schedule."""
    progress = min(step, total_steps) / max(total_steps, 1)
    value = (lr - min_lr) * (1.0 - progress) ** power + min_lr
    if step < warmup_steps:
        value *= WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / warmup_steps
    return value


def build_scheduler(optimizer: torch.optim.Optimizer, args, total_steps: int):
    if args.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=max(total_steps, 1))
    if args.lr_schedule == "poly":

        def factor(step: int) -> float:
            return poly_lr(step, total_steps, args.lr, args.min_lr, args.warmup_steps) / args.lr

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
