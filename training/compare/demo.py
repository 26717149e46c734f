"""`python -m training.compare --demo OUT`: the demo data set generated in OUT/data, then comparisons/demo.toml run
on it in OUT (the arms one after another on this machine) and reported."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from training.cluster import runs as registry
from training.compare.config import Comparison, load_comparison
from training.errors import UserError

DEMO_FILE = registry.REPO / "comparisons" / "demo.toml"
# the demo data set: small enough that all five profiles train in seconds per epoch on a CPU
DEMO_DATA = {"layout": "folder", "size": (256, 128), "num_train": 32, "num_val": 8, "seed": 0}


def demo_data(output_dir: Path) -> Path:
    from demo.dataset import DemoDataError, ensure_demo_dataset

    try:
        return ensure_demo_dataset(Path(output_dir) / "data", **DEMO_DATA)
    except DemoDataError as error:
        raise UserError(str(error)) from None


def demo_comparison(reference_epochs: int | None) -> Comparison:
    """comparisons/demo.toml; `reference_epochs` replaces the budget's reference arm's epochs (a shorter demo)."""
    comparison = load_comparison(DEMO_FILE)
    if reference_epochs is None:
        return comparison
    if reference_epochs < 1:
        raise UserError(f"--demo-epochs {reference_epochs}: expected a whole number >= 1")
    reference = comparison.arm(comparison.budget.reference)
    if len(reference.run.stages) != 1:
        raise UserError(f"{DEMO_FILE}: --demo-epochs expects a reference arm of one stage")
    stages = [{**reference.run.stages[0], "epochs": reference_epochs}]
    reference.run = replace(reference.run, stages=stages)
    return comparison
