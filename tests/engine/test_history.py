"""checkpoints/<id>/history.csv (issue 16): one row per epoch with every logged value, kept exact across resume."""

from __future__ import annotations

import csv
import functools
import os
import signal
import subprocess
import sys

import conftest
import pytest
from conftest import REPO, run_script
from small_profile import run_in_process

import train
from training.engine.history import history_path, read_history, record_epoch, truncate

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

RUNNER = "tests/small_profile.py"
ID = "history-experiment-01"


stage_args = functools.partial(conftest.stage_args, experiment=ID)


def test_rows_replace_later_epochs_and_the_header_grows(tmp_path):
    path = tmp_path / "history.csv"
    record_epoch(path, {"epoch": 1, "train_loss": 2.5, "valid_miou": 0.1, "picture": object()})
    record_epoch(path, {"epoch": 2, "train_loss": 2.0, "valid_miou": 0.2, "valid_iou/road": 0.5})
    with open(path, newline="") as file:
        assert next(csv.reader(file)) == ["epoch", "train_loss", "valid_miou", "valid_iou/road"]
    assert read_history(path) == [
        {"epoch": "1", "train_loss": "2.5", "valid_miou": "0.1", "valid_iou/road": ""},
        {"epoch": "2", "train_loss": "2.0", "valid_miou": "0.2", "valid_iou/road": "0.5"},
    ]
    record_epoch(path, {"epoch": 2, "train_loss": 1.5, "valid_miou": float("nan")})  # epoch 2 again: replaced
    assert [(r["epoch"], r["train_loss"], r["valid_miou"]) for r in read_history(path)] == [
        ("1", "2.5", "0.1"),
        ("2", "1.5", ""),
    ]
    record_epoch(path, {"epoch": 1, "train_loss": 9.0})  # a stage redone from epoch 1 drops everything after it
    assert [r["epoch"] for r in read_history(path)] == ["1"]
    truncate(path, 1)
    assert [r["train_loss"] for r in read_history(path)] == ["9.0"]
    truncate(path, 0)  # --restart
    assert not path.exists() and read_history(path) == []


def test_truncate_puts_back_the_state_s_row_that_a_kill_lost(tmp_path):
    path = tmp_path / "history.csv"
    record_epoch(path, {"epoch": 1, "train_loss": 2.5})
    # killed after the state of epoch 2 was saved (with its row), before the history's rename
    truncate(path, 2, {"epoch": 2, "train_loss": 2.0, "valid_miou": 0.25})
    assert read_history(path) == [
        {"epoch": "1", "train_loss": "2.5", "valid_miou": ""},
        {"epoch": "2", "train_loss": "2.0", "valid_miou": "0.25"},
    ]
    truncate(path, 2, {"epoch": 2, "train_loss": 9.0})  # the file has the row: it is kept as written
    assert [r["train_loss"] for r in read_history(path)] == ["2.5", "2.0"]
    truncate(path, 1, {"epoch": 1, "train_loss": 2.5})  # rows after the state's epoch still go
    assert [r["epoch"] for r in read_history(path)] == ["1"]


def test_values_are_written_exactly(tmp_path):
    path = tmp_path / "history.csv"
    value = 0.1 + 0.2  # 0.30000000000000004: a rounded cell would not read back to the logged number
    record_epoch(path, {"epoch": 1, "valid_miou": value, "profile": "low"})
    assert float(read_history(path)[0]["valid_miou"]) == value


@pytest.fixture(scope="module")
def uninterrupted(tiny_cityscapes, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(RUNNER, "train.py", *stage_args(tiny_cityscapes), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_history(history_path(work / "checkpoints" / ID))


@pytest.mark.slow
def test_every_logged_value_has_a_column(uninterrupted):
    assert [row["epoch"] for row in uninterrupted] == ["1", "2", "3"]
    row = uninterrupted[0]
    for column in (
        "profile",
        "learning_rate",
        "train_loss",
        "valid_loss",
        "valid_miou",
        "valid_mean_dice",
        "valid_pixel_accuracy",
        "valid_iou/road",
        "seconds",
        "images_per_s",
    ):
        assert row[column] != "", column
    assert row["profile"] == "low" and float(row["learning_rate"]) == pytest.approx(1e-3)


@pytest.mark.slow
def test_sigterm_and_rerun_leave_each_epoch_once_with_the_uninterrupted_values(
    uninterrupted, tiny_cityscapes, tmp_path, monkeypatch
):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(REPO / RUNNER), "train.py", *stage_args(tiny_cityscapes)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:  # epoch 1 is saved, epoch 2 starts: stop it there
        if line.startswith("epoch 1/3 |"):
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=240) == 75
    path = history_path(tmp_path / "checkpoints" / ID)
    assert [row["epoch"] for row in read_history(path)] == ["1"]
    # a row of an epoch the state does not hold (left by an earlier run of this id): the rerun must replace it
    record_epoch(path, {**read_history(path)[0], "epoch": 2, "valid_miou": 0.999})

    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes), monkeypatch) == 0
    resumed = read_history(path)
    assert [row["epoch"] for row in resumed] == ["1", "2", "3"]
    for column in ("train_loss", "valid_loss", "valid_miou", "valid_mean_dice", "learning_rate"):
        assert [row[column] for row in resumed] == [row[column] for row in uninterrupted], column
