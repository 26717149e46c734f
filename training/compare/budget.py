"""What a stage costs, and the epochs that bring each arm to the budget.

Training compute of a stage, in FLOPs (2 x MACs):
    2 x images seen x (3 x student MACs + teacher MACs) + 2 x BatchNorm-recalibration MACs
- MACs: thop's count of one forward pass of one image at the training input's size (the profile's patch, or its
  image with --whole-images), as training/efficiency/counting.py counts them (on the meta device); x 3 for the
  forward and the backward pass (the backward costs about twice the forward);
- images seen per epoch: the steps of an epoch (drop-last) x the batch, as the stage's sampler gives them;
- a distillation stage adds its teacher's forward at the same size (no backward); --bn-recalibrate N adds N batches
  of forward passes at the training input's size, once per stage;
- not counted: Fast-SCNN's auxiliary heads (thop counts a forward in eval mode), validation, data loading, the
  optimizer's update. The same rule for every arm, so the comparison is fair to each.

Epochs: an arm's declared stage epochs are its proportions w_s; with per-epoch cost c_s and fixed cost f_s, stage s
gets floor or ceil of k w_s epochs (k = (budget - sum f) / sum(w c)), the combination whose total is closest to the
budget. The result must lie within TOLERANCE of it, else the arm is refused (one line: a budget that one epoch of the
arm's most expensive stage overshoots by more than 5% cannot be matched).

For a wall-time budget the cost of an epoch is estimated by timing a few training steps (and validation forward
passes) of the stage's model at its sizes on its device (`probe_seconds`); the arm's real wall time is measured
while it runs and reported with its deviation from the budget.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import dataclass

import torch

from training.errors import UserError

TOLERANCE = 0.05  # budgets of the arms agree within 5%
MAX_EXACT_STAGES = 12  # beyond this, the floor/ceil search is 2^n: stages are rounded to nearest instead
PROBE_STEPS = 3  # timed training steps per stage for a wall-time budget (after one warm-up step)


@dataclass(frozen=True)
class StageCost:
    experiment_id: str
    profile: str  # the profile's name
    input_size: tuple[int, int]  # (W, H) of a training input: the patch, or the image with --whole-images
    image_size: tuple[int, int]  # (W, H) of the profile's image (validation's input, recalibration)
    images_per_epoch: int
    student_macs: int  # one image's forward at input_size
    teacher_macs: int = 0  # the teacher's forward at input_size (distillation), else 0
    fixed_macs: int = 0  # once per stage: BatchNorm recalibration (forward passes at input_size)
    seconds_per_epoch: float | None = None  # the wall-time estimate (wall-time budgets only)

    @property
    def flop_per_epoch(self) -> float:
        return 2.0 * self.images_per_epoch * (3 * self.student_macs + self.teacher_macs)

    @property
    def fixed_flop(self) -> float:
        return 2.0 * self.fixed_macs

    def flop(self, epochs: int) -> float:
        return epochs * self.flop_per_epoch + self.fixed_flop


def training_flop(costs: list[StageCost], epochs: list[int]) -> float:
    """The arm's training compute in FLOPs for these stage epochs."""
    return sum(cost.flop(count) for cost, count in zip(costs, epochs))


def per_epoch(costs: list[StageCost], kind: str) -> tuple[list[float], list[float]]:
    """(per-epoch cost, fixed cost) of each stage in the budget's unit: FLOPs, or estimated seconds."""
    if kind == "compute":
        return [c.flop_per_epoch for c in costs], [c.fixed_flop for c in costs]
    return [c.seconds_per_epoch or 0.0 for c in costs], [0.0 for _ in costs]


def fit_epochs(weights: list[int], per: list[float], fixed: list[float], budget: float) -> tuple[list[int], float]:
    """The stage epochs whose total cost is closest to `budget` with each stage near its share (floor or ceil of
    k x weight; a stage of weight 0 keeps 0 epochs, any other at least 1); returns (epochs, total cost)."""
    variable = sum(w * c for w, c in zip(weights, per))
    scale = max(budget - sum(fixed), 0.0) / variable
    choices = []
    for weight in weights:
        ideal = scale * weight
        low = max(1, math.floor(ideal)) if weight > 0 else 0
        choices.append(sorted({low, max(low, math.ceil(ideal))}))
    if len(weights) > MAX_EXACT_STAGES:
        choices = [[min(options, key=lambda e, w=w: abs(e - scale * w))] for options, w in zip(choices, weights)]

    def total(epochs) -> float:
        return sum(e * c + f for e, c, f in zip(epochs, per, fixed))

    best = min(itertools.product(*choices), key=lambda epochs: abs(total(epochs) - budget))
    return list(best), total(best)


def deviation(reached: float, budget: float) -> float:
    return (reached - budget) / budget


def check_within(where: str, reached: float, budget: float, unit: str, epochs: list[int]) -> None:
    off = deviation(reached, budget)
    if abs(off) > TOLERANCE:
        raise UserError(
            f"{where}: the closest epochs ({'+'.join(map(str, epochs))}) reach {_amount(reached, unit)}, "
            f"{100 * off:+.1f}% from the budget {_amount(budget, unit)}: expected within {100 * TOLERANCE:.0f}% "
            f"(one epoch of a stage is too large a step: raise the budget, or give the arm more epochs)"
        )


def _amount(value: float, unit: str) -> str:
    return f"{value / 1e12:.4g} TFLOP" if unit == "TFLOP" else f"{value:.1f} s"


# ------------------------------------------------------------------------------------------ counting
@functools.cache
def forward_macs(arch: str, num_classes: int, size: tuple[int, int]) -> int:
    """thop's MACs of one image's forward at `size` (W, H) through `arch` with `num_classes` classes."""
    from training.efficiency.counting import thop_macs
    from training.models.build import build_model

    return int(thop_macs(build_model(arch, num_classes), (size[1], size[0])))


def images_per_epoch(train_images: int, batch_size: int, world_size: int = 1) -> int:
    """Images a stage trains on per epoch: whole batches only (the sampler drops the tail)."""
    from training.data.dataset import steps_per_epoch

    return steps_per_epoch(train_images, batch_size, world_size) * batch_size * world_size


# ------------------------------------------------------------------------------------------ wall time
def probe_seconds(args, cost: StageCost, num_classes: int, val_images: int) -> float:
    """An estimate of one epoch's seconds: PROBE_STEPS timed training steps (forward, backward, update; the teacher's
    forward too) at the stage's batch and input size on its device, x the steps of an epoch, plus the validation's
    forward passes at the image size. Data loading is not timed."""
    from training.models.build import build_model
    from training.runtime.distributed import pick_device

    device = pick_device(args.device)
    model = build_model(getattr(args, "arch", "fast_scnn"), num_classes).to(device)
    teacher = None
    if cost.teacher_macs:
        teacher = build_model(getattr(args, "teacher_arch", "fast_scnn"), num_classes).to(device).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    width, height = cost.input_size
    images = torch.randn(args.batch_size, 3, height, width, device=device)
    target = torch.randint(0, num_classes, (args.batch_size, height, width), device=device)

    def step():
        logits = model(images)
        if teacher is not None:
            with torch.no_grad():
                teacher(images)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_seconds = _timed(step, device, PROBE_STEPS)
    model.eval()
    val_batch = torch.randn(args.batch_size, 3, cost.image_size[1], cost.image_size[0], device=device)
    with torch.no_grad():
        val_seconds = _timed(lambda: model(val_batch), device, 1)
    steps = cost.images_per_epoch // args.batch_size
    return steps * step_seconds + math.ceil(val_images / args.batch_size) * val_seconds


def _timed(work, device: torch.device, repeats: int) -> float:
    """Seconds of one call of `work`, the median of `repeats` after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
