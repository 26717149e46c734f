"""Resume rules (issue 21, items 5, 6, 10, 14, 15): what a resume compares, what it restores, and that an
interrupted stage ends in exactly the state of an uninterrupted one (model, optimizer, scheduler and history).

Every stage here runs in this process with the small profile table (tests/small_profile.py), as its command line
would: a 3-epoch stage takes a few seconds. A stop signal is sent to this process from inside a training step
(`StepMonitor.record`, called once per step), as Slurm's warning would arrive there.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
from pathlib import Path

import conftest
import pytest
import torch
from resume_checks import assert_same_final_state, load_state
from small_profile import run_in_process

import fast_scnn
import train
from training.engine.history import history_path, read_history, record_epoch
from training.engine.step_monitor import StepMonitor
from training.models.card import content_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

ID = "resume-experiment-01"
STEPS_PER_EPOCH = 2  # 4 tiny train images, batch 2


stage_args = functools.partial(conftest.stage_args, experiment=ID)


def signal_at_step(monkeypatch, global_step: int, signum=signal.SIGUSR1) -> None:
    """Send `signum` to this process during training step `global_step` (1-based, counted over the epochs)."""
    record, seen = StepMonitor.record, [0]

    def recording(self, step, *args, **kwargs):
        seen[0] += 1
        if seen[0] == global_step:
            os.kill(os.getpid(), signum)
        return record(self, step, *args, **kwargs)

    monkeypatch.setattr(StepMonitor, "record", recording)


@pytest.fixture(scope="module")
def reference(tiny_cityscapes, tmp_path_factory):
    """An uninterrupted 3-epoch stage: what every interrupted-and-resumed stage here must end as."""
    work = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert run_in_process(train, stage_args(tiny_cityscapes), patch) == 0
    return work


def copy_stage(source: Path, target: Path) -> Path:
    for folder in ("models", "checkpoints"):
        shutil.copytree(source / folder, target / folder)
    return target


# ------------------------------------------------------------------------------------------------ item 14
@pytest.mark.parametrize("global_step", [3, 4], ids=["mid-epoch-2", "end-of-epoch-2"])
def test_a_stopped_and_resumed_stage_ends_in_the_uninterrupted_state(
    reference, tiny_cityscapes, tmp_path, monkeypatch, capsys, global_step
):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_at_step(patch, global_step)
        assert run_in_process(train, stage_args(tiny_cityscapes), patch) == 75
    out = capsys.readouterr().out
    epoch, step = divmod(global_step - 1, STEPS_PER_EPOCH)
    assert f"stopped by SIGUSR1 at epoch {epoch + 1}, step {step + 1}" in out
    assert run_in_process(train, stage_args(tiny_cityscapes), monkeypatch) == 0
    assert f"resume: checkpoints/{ID}/state.pth at epoch {epoch + 1}, step {step + 1}" in capsys.readouterr().out
    assert_same_final_state(tmp_path, reference, ID)


def test_a_stage_resumed_at_an_epoch_boundary_ends_in_the_uninterrupted_state(
    reference, tiny_cityscapes, tmp_path, monkeypatch
):
    """--epochs may grow on resume with a constant lr: 1 epoch, then the same stage to 3 epochs."""
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch) == 0
    assert run_in_process(train, stage_args(tiny_cityscapes, 3), monkeypatch) == 0
    assert_same_final_state(tmp_path, reference, ID)


def test_a_history_row_lost_between_the_state_and_the_history_write_is_put_back(
    reference, tiny_cityscapes, tmp_path, monkeypatch
):
    """A kill after epoch 2's state is renamed and before its history row is: the rerun writes the row again."""
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes, 2), monkeypatch) == 0
    path = history_path(tmp_path / "checkpoints" / ID)
    record_epoch(path, read_history(path)[0])  # what the file held before epoch 2's row was renamed over it
    assert [row["epoch"] for row in read_history(path)] == ["1"]
    assert run_in_process(train, stage_args(tiny_cityscapes, 3), monkeypatch) == 0
    assert_same_final_state(tmp_path, reference, ID)


# ------------------------------------------------------------------------------------------------ item 5
def test_a_moved_data_set_resumes(reference, tiny_cityscapes, tmp_path, monkeypatch, capsys):
    """Staging the data set to another folder (node-local scratch, say) changes its path, not the result."""
    moved = tmp_path / "scratch" / "cityscapes"
    shutil.copytree(tiny_cityscapes, moved, ignore=shutil.ignore_patterns(".cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch) == 0
    capsys.readouterr()
    assert run_in_process(train, stage_args(moved, 3), monkeypatch) == 0, capsys.readouterr().err
    assert "resume: " in capsys.readouterr().out
    assert_same_final_state(work, reference, ID)


def test_a_state_without_a_data_fingerprint_still_compares_the_path(
    reference, tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    """States written before the fingerprint know only the data set's path: a moved data set is refused there."""
    work = copy_stage(reference, tmp_path)
    state = load_state(work, ID)
    del state["data"]
    state["args"]["data_dir"] = "/data/elsewhere"
    torch.save(state, work / "checkpoints" / ID / "state.pth")
    monkeypatch.chdir(work)
    code = run_in_process(train, stage_args(tiny_cityscapes), monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and f"data_dir: '/data/elsewhere' -> '{tiny_cityscapes}'" in err and "--restart" in err, err


def _add_val_pair(root: Path) -> None:
    image = sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))[0]
    relative = image.relative_to(root / "leftImg8bit")
    label = root / "gtFine" / relative.parent / relative.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    shutil.copy(image, image.with_name(image.name.replace("_000019_", "_000099_")))
    shutil.copy(label, label.with_name(label.name.replace("_000019_", "_000099_")))


def _grow_a_train_image(root: Path) -> None:
    image = sorted((root / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[0]
    with open(image, "ab") as file:
        file.write(b"\0" * 16)  # bytes after the PNG's end: still readable, another size


@pytest.mark.parametrize("change", [_add_val_pair, _grow_a_train_image], ids=["val-image-added", "train-image-size"])
def test_a_changed_data_set_is_refused(tiny_cityscapes, tmp_path, monkeypatch, capsys, change):
    data = tmp_path / "data"
    shutil.copytree(tiny_cityscapes, data, ignore=shutil.ignore_patterns(".cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_in_process(train, stage_args(data, 1, "--no-cache"), monkeypatch) == 0
    names = sorted(p.name for p in data.rglob("*.png"))
    change(data)
    assert names != sorted(p.name for p in data.rglob("*.png")) or change is _grow_a_train_image
    capsys.readouterr()
    state_before = content_hash(work / "checkpoints" / ID / "state.pth")
    code = run_in_process(train, stage_args(data, 2, "--no-cache"), monkeypatch)
    err = capsys.readouterr().err
    split = "val" if change is _add_val_pair else "train"
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"checkpoints/{ID}/state.pth: the data set's {split} split changed" in err and "--restart" in err, err
    assert content_hash(work / "checkpoints" / ID / "state.pth") == state_before


# ------------------------------------------------------------------------------------------------ item 6
def test_a_changed_starting_model_is_refused_naming_the_file(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    start = tmp_path / "models" / "start.pth"
    torch.manual_seed(1)
    torch.save(fast_scnn.Model().state_dict(), start)
    args = stage_args(tiny_cityscapes, 1, "--previous-model-path", "models/start.pth")
    assert run_in_process(train, args, monkeypatch) == 0
    recorded = load_state(tmp_path, ID)["inputs"]["init_from"]
    assert recorded == {"path": "models/start.pth", "sha256": content_hash(start)}

    torch.manual_seed(2)  # the previous stage is retrained (say with --restart): another file at the same path
    torch.save(fast_scnn.Model().state_dict(), start)
    capsys.readouterr()
    for epochs in (1, 2):  # "already complete" and a resume alike
        code = run_in_process(
            train, stage_args(tiny_cityscapes, epochs, "--previous-model-path", "models/start.pth"), monkeypatch
        )
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --previous-model-path models/start.pth: changed since "), err
        assert err.count("\n") == 1 and "--restart" in err, err

    # --restart trains the stage again from the new file and records its hash
    args = stage_args(tiny_cityscapes, 1, "--previous-model-path", "models/start.pth", "--restart")
    assert run_in_process(train, args, monkeypatch) == 0
    assert load_state(tmp_path, ID)["inputs"]["init_from"]["sha256"] == content_hash(start)


# ------------------------------------------------------------------------------------------------ item 10
@pytest.mark.parametrize("nan_at, epoch, kept", [(1, 1, False), (3, 2, True)])
def test_a_nonfinite_loss_says_what_state_is_kept_and_it_is(
    tiny_cityscapes, tmp_path, monkeypatch, capsys, nan_at, epoch, kept
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTSCNN_TEST_NAN_AT_STEP", str(nan_at))
    assert run_in_process(train, stage_args(tiny_cityscapes, 2), monkeypatch) == 3
    err = capsys.readouterr().err
    state = tmp_path / "checkpoints" / ID / "state.pth"
    assert err.startswith(f"error: loss is nan at epoch {epoch}, step 1; stopped") and err.count("\n") == 1, err
    assert state.exists() == kept
    if kept:
        assert f"the last good state is kept in {state.relative_to(tmp_path)}" in err
    else:
        assert "no state was kept" in err and "state.pth" not in err, err
        assert not (tmp_path / "models" / f"{ID}.pth").exists()
    monkeypatch.delenv("FASTSCNN_TEST_NAN_AT_STEP")
    assert run_in_process(train, stage_args(tiny_cityscapes, 2), monkeypatch) == 0  # and the same command goes on
    assert ("resume: " in capsys.readouterr().out) == kept


# ------------------------------------------------------------------------------------------------ item 15
def test_a_deleted_best_model_of_a_complete_stage_is_restored(
    reference, tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    work = copy_stage(reference, tmp_path)
    model = work / "models" / f"{ID}.pth"
    expected = torch.load(model, weights_only=True)
    model.unlink()
    monkeypatch.chdir(work)
    assert run_in_process(train, stage_args(tiny_cityscapes), monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"models/{ID}.pth was missing: restored the best epoch" in out and "already complete" in out, out
    restored = torch.load(model, weights_only=True)
    assert restored.keys() == expected.keys() and all(torch.equal(restored[k], expected[k]) for k in expected)
    fast_scnn.Model().load_state_dict(restored)


def test_a_deleted_best_model_that_the_state_cannot_restore_names_the_command(
    reference, tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    """A state written before states kept the best epoch's weights, whose last epoch is not the best one."""
    work = copy_stage(reference, tmp_path)
    path = work / "checkpoints" / ID / "state.pth"
    state = load_state(work, ID)
    state.pop("best_model", None)
    state["best_epoch"] = 1 if state["epoch"] != 1 else 0
    torch.save(state, path)
    (work / "models" / f"{ID}.pth").unlink()
    monkeypatch.chdir(work)
    code = run_in_process(train, stage_args(tiny_cityscapes), monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: models/{ID}.pth: missing") and err.count("\n") == 1, err
    assert "--restart" in err and not math.isnan(state["best_miou"])
