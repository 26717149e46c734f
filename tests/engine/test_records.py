"""What an epoch writes and in which order (training/engine/records.py), the best epoch kept in the progress
(training/engine/state.py), and the exit of a stopped stage (training/errors.py)."""

from __future__ import annotations

import math

import pytest
import torch

import fast_scnn
from training.engine.history import read_history, record_epoch
from training.engine.records import EpochFiles, StagePaths, Writers, write_epoch
from training.engine.state import Progress
from training.errors import EXIT_PREEMPTED, Preempted, UserError, run_cli
from training.models.card import read_card


def recorder(calls: list, fail: str | None = None) -> Writers:
    """Writers that record their name (and the path they would write), the one named `fail` raising as a full disk
    does."""

    def make(name):
        def write(*args):
            if name == fail:
                raise UserError(f"cannot write {name}: No space left on device")
            calls.append(name)

        return write

    return Writers(**{name: make(name) for name in ("model", "card", "preview", "state", "history")})


def files(improved: bool, preview: bool = True) -> EpochFiles:
    return EpochFiles(
        epoch=3,
        state={"epoch": 3},
        history_row={"epoch": 3, "valid_miou": 0.5},
        best_model={"w": torch.zeros(1)} if improved else None,
        card={"experiment_id": "x"} if improved else None,
        preview_png=b"png" if improved and preview else None,
    )


def test_a_new_best_writes_model_card_preview_state_history_in_this_order(tmp_path):
    calls = []
    write_epoch(files(improved=True), StagePaths(tmp_path, "x"), recorder(calls))
    assert calls == ["model", "card", "preview", "state", "history"]


@pytest.mark.parametrize("improved, preview, expected", [(False, True, ["state", "history"]), (True, False, None)])
def test_other_epochs_write_the_state_then_the_history(tmp_path, improved, preview, expected):
    calls = []
    write_epoch(files(improved, preview), StagePaths(tmp_path, "x"), recorder(calls))
    assert calls == (expected or ["model", "card", "state", "history"])


@pytest.mark.parametrize("fail", ["model", "card", "state"])
def test_a_failed_write_stops_the_writes_after_it(tmp_path, fail):
    calls = []
    with pytest.raises(UserError, match="No space left"):
        write_epoch(files(improved=True), StagePaths(tmp_path, "x"), recorder(calls, fail))
    order = ["model", "card", "preview", "state", "history"]
    assert calls == order[: order.index(fail)]


def test_a_failed_state_write_leaves_the_history_as_it_was(tmp_path):
    paths = StagePaths(tmp_path, "x")
    record_epoch(paths.history, {"epoch": 1, "valid_miou": 0.25})
    before = paths.history.read_bytes()

    def full_disk(*_args):
        raise UserError("cannot write state.pth: No space left on device")

    with pytest.raises(UserError):
        write_epoch(files(improved=False), paths, Writers(state=full_disk))
    assert paths.history.read_bytes() == before and read_history(paths.history)[-1]["epoch"] == "1"


def test_the_real_writers_put_the_card_beside_the_model(tmp_path):
    paths = StagePaths(tmp_path / "out", "x")
    weights = fast_scnn.Model().state_dict()
    write_epoch(
        EpochFiles(3, {"epoch": 3}, {"epoch": 3}, weights, {"experiment_id": "x"}, None),
        paths,
    )
    assert sorted(p.name for p in (tmp_path / "out" / "models").iterdir()) == ["x.json", "x.pth"]
    assert read_card(paths.model)["experiment_id"] == "x"
    assert torch.load(paths.state, weights_only=True) == {"epoch": 3}
    assert read_history(paths.history) == [{"epoch": "3"}]


def test_the_best_epoch_is_kept_as_a_copy_on_the_cpu():
    model = fast_scnn.Model(aux=True)
    progress = Progress()

    def metrics(miou):
        return {"miou": miou, "mean_dice": miou / 2, "pixel_accuracy": 0.9, "confusion_matrix": torch.eye(19)}

    assert progress.end_epoch(metrics(0.3), model) is True
    kept = {k: v.clone() for k, v in progress.best_weights.items()}
    assert not any(k.startswith("aux_heads.") for k in kept) and set(progress.best_aux_heads)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # later steps change the live weights, not the kept copy
    assert all(torch.equal(kept[k], v) for k, v in progress.best_weights.items())
    assert progress.end_epoch(metrics(0.2), model) is False  # not better: the best stays
    assert (progress.epoch, progress.best_epoch, progress.step) == (2, 1, 0)
    assert progress.last_metrics == {"epoch": 2, "miou": 0.2, "mean_dice": 0.1, "pixel_accuracy": 0.9}
    assert all(torch.equal(kept[k], v) for k, v in progress.best_weights.items())
    assert progress.end_epoch(metrics(math.nan), model) is False  # an undefined mIoU is never a new best


def test_a_stopped_stage_exits_75_without_an_error_line(capsys):
    def stopped(_argv):
        raise Preempted()

    with pytest.raises(SystemExit) as done:
        run_cli(stopped, [])
    assert done.value.code == EXIT_PREEMPTED == 75
    assert capsys.readouterr().err == ""
