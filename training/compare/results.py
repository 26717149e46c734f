"""What the arms reached: each stage's checkpoints/<id>/history.csv read against the plan (OUT/plan.json), as
curves (validation mIoU at the labels' full resolution against cumulative training compute and wall time) and one
summary row per arm.

- cumulative compute: the plan's cost of each epoch in the history (and a stage's fixed cost, BatchNorm
  recalibration, at its start: the history's epoch 0 of a test-resolution stage);
- cumulative wall time: the history's `seconds` of each epoch (training and validation; not a stage's set-up, its
  cache building or a queue's wait);
- the target: 95% of the best arm's best mIoU; each arm's compute and wall time to reach it are those of its first
  epoch at or above it (empty when it never does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from training.engine.history import FILE_NAME, read_history
from training.errors import UserError

TARGET_FRACTION = 0.95
COLUMNS = [
    "arm",
    "epochs",
    "train_tflop",
    "wall_time_s",
    "best_miou",
    "best_stage",
    "best_epoch",
    "budget_kind",
    "budget",
    "budget_unit",
    "reached",
    "deviation_pct",
    "target_miou",
    "tflop_to_95",
    "wall_time_to_95_s",
]


@dataclass(frozen=True)
class Point:
    stage: int
    epoch: int  # the epoch within its stage
    tflop: float  # cumulative training compute after this epoch
    seconds: float  # cumulative wall time after this epoch
    miou: float


@dataclass
class ArmResult:
    name: str
    epochs: list[int]  # planned, per stage
    points: list[Point] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # stages with fewer epochs in their history than planned

    @property
    def tflop(self) -> float:
        return self.points[-1].tflop if self.points else 0.0

    @property
    def seconds(self) -> float:
        return self.points[-1].seconds if self.points else 0.0

    @property
    def best(self) -> Point | None:
        scored = [p for p in self.points if not math.isnan(p.miou)]
        return max(scored, key=lambda p: p.miou) if scored else None

    def first_at(self, target: float) -> Point | None:
        return next((p for p in self.points if not math.isnan(p.miou) and p.miou >= target), None)


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def history_file(output_dir: Path, arm: dict, stage: dict) -> Path:
    return Path(output_dir) / arm["folder"] / "checkpoints" / stage["experiment_id"] / FILE_NAME


def read_arm(output_dir: Path, arm: dict) -> ArmResult:
    """The arm's curve from its stages' history.csv files, in stage order."""
    result = ArmResult(arm["name"], [stage["epochs"] for stage in arm["stages"]])
    flop = seconds = 0.0
    for number, stage in enumerate(arm["stages"], start=1):
        path = history_file(output_dir, arm, stage)
        rows = sorted(read_history(path), key=lambda row: int(row["epoch"]))
        flop += stage["fixed_flop"]
        for row in rows:
            if int(row["epoch"]) >= 1:  # epoch 0: a test-resolution stage's start (its fixed cost, counted above)
                flop += stage["flop_per_epoch"]
            seconds += _float(row.get("seconds"))
            result.points.append(Point(number, int(row["epoch"]), flop / 1e12, seconds, _float(row.get("valid_miou"))))
        trained = sum(int(row["epoch"]) >= 1 for row in rows)
        if trained < stage["epochs"]:
            result.missing.append(f"{path} ({trained} of {stage['epochs']} epochs)")
    return result


def read_results(output_dir: Path, plan: dict, complete: bool = True) -> list[ArmResult]:
    """Every arm's result; with `complete`, a stage with fewer epochs than planned is refused in one line."""
    results = [read_arm(output_dir, arm) for arm in plan["arms"]]
    missing = [f"arm '{r.name}': {r.missing[0]}" for r in results if r.missing]
    if complete and missing:
        more = f" (and {len(missing) - 1} more arm(s))" if len(missing) > 1 else ""
        raise UserError(
            f"{missing[0]}{more}: not done yet; expected every stage's epochs (squeue shows the jobs left; a failed "
            f"stage's log is in slurms/)"
        )
    return results


def target_miou(results: list[ArmResult]) -> float:
    bests = [r.best.miou for r in results if r.best is not None]
    return TARGET_FRACTION * max(bests) if bests else math.nan


def summary_rows(plan: dict, results: list[ArmResult]) -> list[dict]:
    """One row per arm (COLUMNS): what it reached, its budget and deviation, its compute and time to the target."""
    budget = plan["budget"]
    compute = budget["kind"] == "compute"
    amount = budget["amount"] / 1e12 if compute else budget["amount"]
    target = target_miou(results)
    rows = []
    for result in results:
        best, first = result.best, result.first_at(target)
        reached = result.tflop if compute else result.seconds
        rows.append(
            {
                "arm": result.name,
                "epochs": "+".join(map(str, result.epochs)),
                "train_tflop": result.tflop,
                "wall_time_s": result.seconds,
                "best_miou": best.miou if best else math.nan,
                "best_stage": best.stage if best else "",
                "best_epoch": best.epoch if best else "",
                "budget_kind": budget["kind"],
                "budget": amount,
                "budget_unit": "TFLOP" if compute else "s",
                "reached": reached,
                "deviation_pct": 100 * (reached - amount) / amount,
                "target_miou": target,
                "tflop_to_95": first.tflop if first else "",
                "wall_time_to_95_s": first.seconds if first else "",
            }
        )
    return rows
