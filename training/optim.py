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
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


def poly_lr(step: int, total_steps: int, lr: float, min_lr: float = 0.0, warmup_steps: int = 0,
            power: float = POLY_POWER) -> float:
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
