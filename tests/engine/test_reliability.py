"""Reliability (issue 7): atomic checkpoints under SIGKILL, exact resume after SIGTERM, refused resumes, non-finite
losses, W&B and disk faults, and one clear line with exit code 2 for every bad input.

The stages here train with the small profile table of tests/small_profile.py (the tiny images' own size), so that
a 3-epoch stage takes seconds; everything else is the scripts' real code. A module-wide uninterrupted 3-epoch stage
('baseline') is the reference of the resume tests and the starting point of the fault tests.
"""

from __future__ import annotations

import functools
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import REPO, run_script
from PIL import Image
from resume_checks import assert_same_final_state
from small_profile import run_in_process

import fast_scnn
import train
import train_dice
import train_distillation
from training.engine.tracking import Tracker
from training.models.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

RUNNER = "tests/small_profile.py"
ID = "fastscnn-training-experiment-01"


stage_args = functools.partial(conftest.stage_args, experiment=ID)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hashes(work: Path) -> dict[str, str]:
    return {
        str(p.relative_to(work)): sha256(p)
        for p in sorted(work.rglob("*"))
        if p.is_file() and p.parts[len(work.parts)] in ("models", "checkpoints", "measurements")
    }


def max_abs_difference(a: Path, b: Path) -> float:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def copy_outputs(source: Path, target: Path) -> Path:
    for folder in ("models", "checkpoints", "measurements"):
        shutil.copytree(source / folder, target / folder)
    return target


def saved_epoch(state: Path) -> int:
    """The epoch of a state file (-1 while there is none); it is replaced atomically, so a read sees a whole file."""
    try:
        return torch.load(state, weights_only=True)["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


@pytest.fixture(scope="module")
def baseline(tiny_cityscapes, tmp_path_factory):
    """An uninterrupted 3-epoch stage, run with W&B forced online without an API key (it must fail and not matter)."""
    work = tmp_path_factory.mktemp("baseline")
    home = tmp_path_factory.mktemp("home")  # no ~/.netrc: no W&B key
    result = run_script(
        RUNNER,
        "train.py",
        *stage_args(tiny_cityscapes),
        cwd=work,
        env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(home), "WANDB_DIR": str(home)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return work, result


# ------------------------------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_files_and_resume_is_exact(
    baseline, tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "FASTSCNN_TEST_SLOW_WRITE": "1.5"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / RUNNER), "train.py", *stage_args(tiny_cityscapes)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state, models = tmp_path / "checkpoints" / ID / "state.pth", tmp_path / "models"
    temporaries = []
    try:
        deadline = time.monotonic() + 240
        while saved_epoch(state) < 1:  # epoch 1 is saved (the state of epoch 0 is written before the first step) ...
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        while not temporaries:  # ... and epoch 2 is being written: kill it inside a write
            assert process.poll() is None and time.monotonic() < deadline
            temporaries = list(models.glob(".*.tmp")) + list(state.parent.glob(".*.tmp"))
            time.sleep(0.02)
        process.kill()
    finally:
        process.kill()
        process.wait()

    saved = torch.load(state, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 0)
    fast_scnn.Model().load_state_dict(torch.load(models / f"{ID}.pth", weights_only=True))
    # the half-done write is a hidden temporary: what a reader looks for is intact
    assert [p.name for p in models.glob("*.pth")] == [f"{ID}.pth"]
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in temporaries)

    monkeypatch.chdir(tmp_path)  # the same command again (in this process, to save a start-up)
    assert run_in_process(train, stage_args(tiny_cityscapes), monkeypatch) == 0
    out = capsys.readouterr().out
    assert "resume: checkpoints/" in out and "at epoch 2, step 0" in out
    assert not list(models.glob(".*.tmp")) and not list(state.parent.glob(".*.tmp"))  # leftovers cleaned
    difference = max_abs_difference(models / f"{ID}.pth", baseline[0] / "models" / f"{ID}.pth")
    print(f"resume after SIGKILL between epochs 1 and 2: max abs difference {difference}")
    assert difference <= 1e-6
    assert_same_final_state(tmp_path, baseline[0], ID)  # the last epoch's model, optimizer, scheduler, history


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_75_and_resumes_exactly(baseline, tiny_cityscapes, tmp_path, monkeypatch, capsys):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(REPO / RUNNER), "train.py", *stage_args(tiny_cityscapes)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines = []
        for line in process.stdout:  # after epoch 1 is saved, epoch 2 starts: signal it there
            lines.append(line)
            if line.startswith("epoch 1/3 |"):
                process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=240) == 75, "".join(lines) + (tmp_path / "stderr.txt").read_text()
    stdout = "".join(lines)
    assert "SIGTERM received" in (tmp_path / "stderr.txt").read_text()
    assert "stopped by SIGTERM at epoch 2, step " in stdout and "(exit 75)" in stdout
    saved = torch.load(tmp_path / "checkpoints" / ID / "state.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] >= 1  # mid-epoch 2

    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes), monkeypatch) == 0
    assert f"at epoch 2, step {saved['step']}" in capsys.readouterr().out
    difference = max_abs_difference(tmp_path / "models" / f"{ID}.pth", baseline[0] / "models" / f"{ID}.pth")
    print(f"resume after SIGTERM at epoch 2, step {saved['step']}: max abs difference {difference}")
    assert difference <= 1e-6
    assert_same_final_state(tmp_path, baseline[0], ID)  # the last epoch's model, optimizer, scheduler, history


def test_resume_with_other_arguments_is_refused_and_allowed_with_restart(
    baseline, tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    work = copy_outputs(baseline[0], tmp_path)
    monkeypatch.chdir(work)
    before = hashes(work)
    code = run_in_process(train, stage_args(tiny_cityscapes, 3, "--lr", "0.002", "--seed", "7"), monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "cannot resume with different arguments (lr: 0.001 -> 0.002; seed: 42 -> 7)" in err and "--restart" in err
    assert hashes(work) == before

    code = run_in_process(train, stage_args(tiny_cityscapes, 1, "--lr", "0.002", "--restart"), monkeypatch)
    out = capsys.readouterr().out
    assert code == 0 and "init: random" in out and "resume:" not in out
    state = torch.load(work / "checkpoints" / ID / "state.pth", weights_only=True)
    assert state["epoch"] == 1 and state["args"]["lr"] == 0.002


def test_fresh_start_over_an_existing_model_is_refused_and_allowed_with_restart(
    tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "models" / f"{ID}.pth")  # another run's model, no state
    before = hashes(tmp_path)
    code = run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"models/{ID}.pth already exists" in err and "--restart" in err
    assert hashes(tmp_path) == before and not (tmp_path / "checkpoints").exists()

    code = run_in_process(train, stage_args(tiny_cityscapes, 1, "--restart"), monkeypatch)
    assert code == 0 and "done: " in capsys.readouterr().out
    assert hashes(tmp_path)[f"models/{ID}.pth"] != before[f"models/{ID}.pth"]
    # and the stage's own model, with its state, is not a stranger's: the same command says it is complete
    assert run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch) == 0
    assert f"{ID}: already complete" in capsys.readouterr().out


@pytest.mark.slow
def test_a_stage_killed_after_writing_its_first_model_resumes(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    """The state is written before the first step: a job killed after its first best model (a node failure, say)
    and requeued resumes rather than being refused as an overwrite."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "FASTSCNN_TEST_SLOW_WRITE": "1.5"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / RUNNER), "train.py", *stage_args(tiny_cityscapes, 2)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state, model = tmp_path / "checkpoints" / ID / "state.pth", tmp_path / "models" / f"{ID}.pth"
    try:
        deadline = time.monotonic() + 240
        while not model.exists():  # epoch 1's model is written, its state not yet (slow writes)
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
    finally:
        process.kill()
        process.wait()
    assert saved_epoch(state) == 0
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes, 2), monkeypatch) == 0
    out = capsys.readouterr().out
    assert "resume: checkpoints/" in out and "at epoch 1, step 0" in out and "done: " in out


def test_resume_with_another_number_of_processes_is_refused(baseline, tiny_cityscapes, tmp_path, monkeypatch, capsys):
    work = copy_outputs(baseline[0], tmp_path)
    path = work / "checkpoints" / ID / "state.pth"
    state = torch.load(path, weights_only=True)
    assert (state["world_size"], state["steps_per_epoch"]) == (1, 2)  # 4 images, batch 2, one process
    state.update(world_size=2, steps_per_epoch=1)  # as a 2-process run of the same stage saves it
    torch.save(state, path)
    monkeypatch.chdir(work)
    before = hashes(work)
    code = run_in_process(train, stage_args(tiny_cityscapes, 4), monkeypatch)  # constant lr: --epochs may grow
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert (
        "saved by 2 process(es) with 1 steps per epoch, but this run has 1 process(es) with 2 steps per epoch" in err
        and "--restart" in err
    )
    assert hashes(work) == before


# ------------------------------------------------------------------------------------------------ numerical faults
def test_nan_loss_stops_with_exit_3_naming_epoch_and_step_and_keeps_the_state(
    tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTSCNN_TEST_NAN_AT_STEP", "3")  # epoch 2, step 1 (2 steps per epoch)
    code = run_in_process(train, stage_args(tiny_cityscapes, 2), monkeypatch)
    captured = capsys.readouterr()
    assert code == 3
    assert captured.err.startswith("error: loss is nan at epoch 2, step 1; stopped") and captured.err.count("\n") == 1
    state = torch.load(tmp_path / "checkpoints" / ID / "state.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    fast_scnn.Model().load_state_dict(torch.load(tmp_path / "models" / f"{ID}.pth", weights_only=True))
    assert not (tmp_path / "measurements" / "durations.csv").exists()


def test_skip_nonfinite_skips_and_counts(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTSCNN_TEST_NAN_AT_STEP", "3")
    code = run_in_process(train, stage_args(tiny_cityscapes, 2, "--skip-nonfinite"), monkeypatch)
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped" not in next(line for line in out.splitlines() if line.startswith("epoch 1/2"))
    assert "skipped 1 non-finite steps" in next(line for line in out.splitlines() if line.startswith("epoch 2/2"))
    state = torch.load(tmp_path / "checkpoints" / ID / "state.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ W&B faults
@pytest.mark.slow
def test_wandb_online_without_key_does_not_stop_training(baseline):
    result = baseline[1]
    assert "W&B: disabled for this stage after an error" in result.stderr and "training continues" in result.stderr
    assert "done: " in result.stdout


def test_wandb_init_failure_is_reported_once_and_ignored(monkeypatch, capsys):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("service crashed")

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = Tracker("x", {"a": 1})
    tracker.log({"loss": 1.0})
    assert tracker.image(np.zeros((4, 4, 3), np.uint8)) is None
    tracker.finish()
    assert tracker.run is None
    assert capsys.readouterr().err.count("W&B: disabled") == 1


def test_wandb_failing_during_training_does_not_stop_the_stage(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    import wandb

    class CrashingRun:
        id = "crashing"

        def log(self, *args, **kwargs):
            raise ConnectionError("wandb service is gone")

        def finish(self):
            raise ConnectionError("wandb service is gone")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", lambda *args, **kwargs: CrashingRun())
    code = run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch)
    captured = capsys.readouterr()
    assert code == 0 and "done: " in captured.out
    assert "W&B: disabled for this stage after an error (ConnectionError" in captured.err


# ------------------------------------------------------------------------------------------------ disk faults
def test_output_folder_that_is_a_file_stops_before_training(baseline, tiny_cityscapes, tmp_path, monkeypatch, capsys):
    work = copy_outputs(baseline[0], tmp_path)
    monkeypatch.chdir(work)
    shutil.rmtree(work / "checkpoints" / ID)
    (work / "checkpoints" / ID).write_text("in the way\n")
    before = hashes(work)
    code = run_in_process(train, stage_args(tiny_cityscapes, 3, "--restart"), monkeypatch)
    captured = capsys.readouterr()
    assert code == 2 and "epoch 1/3" not in captured.out
    assert (
        captured.err
        == f"error: cannot write in checkpoints/{ID}/: it is a file, expected a folder (nothing was written)\n"
    )
    assert hashes(work) == before


@pytest.mark.slow
def test_full_disk_stops_with_a_clear_message_and_damages_nothing(baseline, tiny_cityscapes, tmp_path):
    work = copy_outputs(baseline[0], tmp_path)
    before = hashes(work)

    def small_files():  # files above 1 MB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / RUNNER), "train.py", *stage_args(tiny_cityscapes, 4)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: cannot write ") and "File too large" in result.stderr
    assert "(the previous file, if any, is unchanged)" in result.stderr and "Traceback" not in result.stderr
    after = hashes(work)
    assert {k: v for k, v in after.items() if "preview-epoch-004" not in k} == before
    assert not [p for p in work.rglob(".*.tmp")]


# ------------------------------------------------------------------------------------------------ bad input
def make_bad_inputs(root: Path, tiny: Path) -> dict[str, Path]:
    """Broken copies of the tiny data set and broken checkpoints, by name."""

    def copy(name):
        shutil.copytree(tiny, root / name)
        return root / name

    paths = {"tiny": tiny, "missing": root / "no-such-dir"}
    (root / "no-layout").mkdir()
    (root / "no-layout" / "images").mkdir()
    paths["no-layout"] = root / "no-layout"
    empty = copy("empty-split")
    for split_dir in (empty / "leftImg8bit" / "train", empty / "gtFine" / "train"):
        shutil.rmtree(split_dir)
        split_dir.mkdir()
    paths["empty-split"] = empty
    unlabelled = copy("missing-label")
    label = sorted((unlabelled / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    label.unlink()
    paths["missing-label"], paths["missing-label-file"] = unlabelled, label
    corrupt = copy("corrupt-png")
    image = sorted((corrupt / "leftImg8bit" / "train").rglob("*.png"))[0]
    image.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    paths["corrupt-png"], paths["corrupt-png-file"] = corrupt, image
    foreign = copy("foreign-ids")
    label = sorted((foreign / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    ids = np.array(Image.open(label))
    ids[:4, :4] = 40
    Image.fromarray(ids).save(label)
    paths["foreign-ids"], paths["foreign-ids-file"] = foreign, label

    (root / "text.pth").write_text("not a checkpoint\n")
    torch.save({"epoch": 3, "lr": 1e-3}, root / "dict.pth")
    torch.save(build_model("lraspp_mobilenet_v3_large", 19).state_dict(), root / "lraspp.pth")
    torch.save(fast_scnn.Model(n_classes=5).state_dict(), root / "five-classes.pth")
    torch.save(fast_scnn.Model().state_dict(), root / "teacher.pth")
    torch.save(fast_scnn.Model(), root / "whole-model.pth")
    for name in ("text", "dict", "lraspp", "five-classes", "teacher", "whole-model"):
        paths[name] = root / f"{name}.pth"
    paths["missing-pth"] = root / "no-such.pth"
    return paths


# name: (script module, arguments with {placeholders} from make_bad_inputs, what the message must contain)
BAD_INPUTS = {
    "missing data dir": (train, "--data-dir {missing}", "--data-dir {missing}: no such directory"),
    "data dir without the layout": (train, "--data-dir {no-layout}", "missing leftImg8bit/train/"),
    "empty split": (train, "--data-dir {empty-split}", "split 'train' is empty"),
    "image without its label": (
        train,
        "--data-dir {missing-label}",
        "has no label file (expected {missing-label-file})",
    ),
    "corrupt PNG": (train, "--data-dir {corrupt-png}", "cannot read PNG {corrupt-png-file}"),
    "label ids outside 0-33/255": (train, "--data-dir {foreign-ids}", "label file {foreign-ids-file}: label ids [40]"),
    "previous model missing": (
        train,
        "--previous-model-path {missing-pth}",
        "--previous-model-path {missing-pth}: no such file",
    ),
    "previous model not a checkpoint": (
        train,
        "--previous-model-path {text}",
        "not a readable PyTorch checkpoint (not a file written by torch.save)",
    ),
    "previous model a whole pickled model": (
        train,
        "--previous-model-path {whole-model}",
        "it holds Python objects besides tensors",
    ),
    "previous model not a state dict": (train, "--previous-model-path {dict}", "not a state_dict"),
    "previous model of another architecture": (
        train,
        "--previous-model-path {lraspp}",
        "holds a lraspp_mobilenet_v3_large model, but the architecture is fast_scnn",
    ),
    "previous model with another class count": (
        train,
        "--previous-model-path {five-classes}",
        "trained for 5 classes, expected 19",
    ),
    "teacher missing": (
        train_distillation,
        "--trained-teacher-model-path {missing-pth}",
        "--trained-teacher-model-path {missing-pth}: no such file",
    ),
    "teacher not a state dict": (train_distillation, "--trained-teacher-model-path {dict}", "not a state_dict"),
    "teacher of another architecture": (
        train_distillation,
        "--trained-teacher-model-path {lraspp}",
        "holds a lraspp_mobilenet_v3_large model, but the architecture is fast_scnn",
    ),
    "teacher with another class count": (
        train_distillation,
        "--trained-teacher-model-path {five-classes}",
        "trained for 5 classes, expected 19",
    ),
    "unknown profile": (train, "--profile ultra", "--profile: unknown profile 'ultra'"),
    "temperature <= 0": (
        train_distillation,
        "--trained-teacher-model-path {teacher} --temperature 0",
        "--temperature 0.0: expected a number > 0",
    ),
    "alpha outside [0, 1]": (
        train_distillation,
        "--trained-teacher-model-path {teacher} --alpha 1.5",
        "--alpha 1.5: expected a number in [0, 1]",
    ),
    "negative Dice weight": (train_dice, "--dice-loss-weight -0.5", "--dice-loss-weight -0.5: expected a number >= 0"),
    "batch size < 1": (train, "--batch-size 0", "--batch-size 0: expected an integer >= 1"),
    "epochs < 1": (train, "--epochs 0", "--epochs 0: expected an integer >= 1"),
    "batch size 1 (BatchNorm)": (train, "--batch-size 1", "--batch-size 1: expected >= 2 per process"),
}


def bad_input_argv(case: str, paths: dict[str, Path]) -> tuple[list[str], str]:
    _module, arguments, expected = BAD_INPUTS[case]
    values = {k: str(v) for k, v in paths.items()}
    argv = conftest.stage_args(values["tiny"], 1, experiment="bad")
    argv += [part.format_map(values) if "{" in part else part for part in arguments.split()]  # later flags win
    return argv, expected.format_map(values)


@pytest.fixture(scope="module")
def bad_inputs(tiny_cityscapes, tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"), tiny_cityscapes)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exit_2_one_line_nothing_written(case, bad_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, expected = bad_input_argv(case, bad_inputs)
    code = run_in_process(BAD_INPUTS[case][0], argv, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, workers", [("missing data dir", "0"), ("corrupt PNG", "1"), ("teacher of another architecture", "0")]
)
def test_bad_input_as_a_process_has_no_traceback(case, workers, bad_inputs, tmp_path):
    argv, expected = bad_input_argv(case, bad_inputs)
    argv[argv.index("--num-workers") + 1] = workers  # a data error raised in a loader worker as well
    script = Path(BAD_INPUTS[case][0].__file__).name
    result = run_script(RUNNER, script, *argv, cwd=tmp_path)
    assert result.returncode == 2
    # libpng itself prints a line on a corrupt file (through torchvision's decoder, before our message): not ours
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("libpng error:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
