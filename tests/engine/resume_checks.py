"""What "a resumed stage ends exactly where an uninterrupted one does" means, checked on two stage folders: the final
state's model, optimizer and scheduler (every tensor and number), its position and best epoch, the best model, and
the history (every value but the timings). Shared by the resume tests (test_resume.py, test_reliability.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from training.engine.history import history_path, read_history

TIMING_COLUMNS = {"seconds", "images_per_s"}  # the only history values that may differ between two runs


def load_state(work: Path, experiment: str) -> dict:
    return torch.load(work / "checkpoints" / experiment / "state.pth", weights_only=True)


def tensors_of(value, prefix: str = "") -> dict[str, object]:
    """Every leaf of a nested state (dicts, lists, tensors, numbers) by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in tensors_of(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in tensors_of(item, f"{prefix}/{i}").items()}
    return {prefix: value}


def assert_same_final_state(work: Path, reference: Path, experiment: str) -> None:
    """The final state's model, optimizer and scheduler, the best model and the history equal the reference's."""
    final, expected = load_state(work, experiment), load_state(reference, experiment)
    for part in ("model", "optimizer", "scheduler"):
        got, want = tensors_of(final[part]), tensors_of(expected[part])
        assert got.keys() == want.keys(), part
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), f"{part}{key} differs"
            else:
                assert got[key] == value, f"{part}{key}: {got[key]!r} != {value!r}"
    assert (final["epoch"], final["step"], final["best_epoch"], final["best_miou"]) == (
        expected["epoch"],
        expected["step"],
        expected["best_epoch"],
        expected["best_miou"],
    )
    best = torch.load(work / "models" / f"{experiment}.pth", weights_only=True)
    best_expected = torch.load(reference / "models" / f"{experiment}.pth", weights_only=True)
    assert all(torch.equal(best[k], best_expected[k]) for k in best_expected) and best.keys() == best_expected.keys()
    rows = read_history(history_path(work / "checkpoints" / experiment))
    rows_expected = read_history(history_path(reference / "checkpoints" / experiment))
    strip = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]
    strip_expected = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows_expected]
    assert [row["epoch"] for row in strip] == [row["epoch"] for row in strip_expected]
    for row, row_expected in zip(strip, strip_expected):
        changed = {k: (row.get(k), v) for k, v in row_expected.items() if row.get(k) != v}
        assert row.keys() == row_expected.keys() and not changed, f"history of epoch {row['epoch']}: {changed}"
