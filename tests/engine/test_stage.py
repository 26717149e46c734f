"""One curriculum stage of each training script, end to end on tiny demo data, and the architecture checks.

The four scripts run once each, as a user runs them (real profiles, subprocesses), in one working folder:
  teacher-s1        train.py                      profile 1, random init           (the teacher)
  dice-s2           train_dice.py                 profile 1, from teacher-s1       (a stage k > 1)
  student-s1        train_distillation.py         profile 1, teacher teacher-s1
  student-dice-s2   train_distillation_dice.py    profile 2, teacher teacher-s1, from student-s1
and the teacher's command again (already complete).
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pytest
import torch
from conftest import run_script
from PIL import Image

import fast_scnn
from training.errors import UserError
from training.losses import distillation_loss
from training.models.build import build_model, load_teacher, load_weights
from training.models.card import read_card

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

COMMON = ("--epochs", "1", "--batch-size", "2", "--num-workers", "0")
IMAGE_WIDTH = {"low": 576, "medium": 768}
IMAGE_HEIGHT = {"low": 288, "medium": 384}
RUNS = {  # id: (script, profile, extra arguments)
    "teacher-s1": ("train.py", "low", ()),
    "dice-s2": ("train_dice.py", "low", ("--previous-model-path", "models/teacher-s1.pth")),
    "student-s1": ("train_distillation.py", "low", ("--trained-teacher-model-path", "models/teacher-s1.pth")),
    "student-dice-s2": (
        "train_distillation_dice.py",
        "medium",
        (
            "--trained-teacher-model-path",
            "models/teacher-s1.pth",
            "--previous-student-model-path",
            "models/student-s1.pth",
        ),
    ),
}
LOSS_NAMES = {
    "teacher-s1": ["train_loss"],
    "dice-s2": ["train_ce_loss", "train_dice_loss"],
    "student-s1": ["train_total_loss", "train_ce_loss", "train_kd_loss"],
    "student-dice-s2": ["train_total_loss", "train_ce_loss", "train_kd_loss", "train_dice_loss"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stages(tiny_cityscapes, tmp_path_factory):
    work = tmp_path_factory.mktemp("stages")
    done = {}
    teacher_hash = None
    for experiment, (script, profile, extra) in RUNS.items():
        if experiment == "student-s1":
            teacher_hash = sha256(work / "models" / "teacher-s1.pth")
        done[experiment] = run_script(
            script,
            "--data-dir",
            str(tiny_cityscapes),
            *COMMON,
            "--profile",
            profile,
            "--experiment-id",
            experiment,
            *extra,
            cwd=work,
        )
        assert done[experiment].returncode == 0, f"{experiment}:\n{done[experiment].stdout}\n{done[experiment].stderr}"
    return {"work": work, "runs": done, "teacher_hash": teacher_hash}


def epoch_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("epoch 1/1 |")]
    assert len(lines) == 1, stdout
    return lines[0]


def logged(stdout: str, name: str) -> float:
    match = re.search(rf"\| {name} ([-\d.naif]+) ", epoch_line(stdout))
    assert match, f"{name} not in {epoch_line(stdout)}"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", list(RUNS))
def test_stage_writes_loadable_model_state_row_and_preview(stages, experiment):
    work, result = stages["work"], stages["runs"][experiment]
    script, profile, _ = RUNS[experiment]

    model = fast_scnn.Model(in_channels=3, n_classes=19)
    model.load_state_dict(torch.load(work / "models" / f"{experiment}.pth", weights_only=True))

    state = torch.load(work / "checkpoints" / experiment / "state.pth", weights_only=True)
    assert {
        "version",
        "script",
        "args",
        "epochs",
        "epoch",
        "step",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "best_miou",
        "best_epoch",
        "elapsed",
        "epoch_sums",
        "init_from",
        "wandb_id",
        "best_confusion_matrix",
    } <= set(state)
    assert (state["script"], state["epoch"], state["step"], state["best_epoch"]) == (script, 1, 0, 1)
    assert state["args"]["profile"] == profile and state["args"]["lr"] == 1e-3
    assert state["best_confusion_matrix"].shape == (19, 19)

    with open(work / "measurements" / "durations.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["experiment_id"] == experiment]
    assert len(rows) == 1
    row = rows[0]
    assert {
        "experiment_id",
        "script",
        "profile",
        "image_size",
        "patch_size",
        "epochs",
        "wall_time_s",
        "s_per_epoch",
        "device",
        "processes",
        "best_miou",
        "best_epoch",
        "date",
    } <= set(row)
    assert (row["script"], row["profile"], row["epochs"], row["device"], row["processes"], row["best_epoch"]) == (
        script,
        profile,
        "1",
        "cpu",
        "1",
        "1",
    )
    assert row["image_size"] == f"{IMAGE_WIDTH[profile]}x{IMAGE_HEIGHT[profile]}"
    assert 0 <= float(row["best_miou"]) <= 1 and float(row["wall_time_s"]) > 0
    assert abs(float(row["best_miou"]) - state["best_miou"]) < 1e-4

    card = read_card(work / "models" / f"{experiment}.pth")  # the model card beside the model
    assert (card["script"], card["profile"]["name"], card["profile"]["image_size"]) == (
        script,
        profile,
        row["image_size"],
    )
    assert card["best"]["epoch"] == card["last"]["epoch"] == 1 and card["best"]["miou"] == pytest.approx(
        state["best_miou"]
    )

    previews = sorted((work / "checkpoints" / experiment).glob("preview-epoch-*.png"))
    assert [p.name for p in previews] == ["preview-epoch-001.png"]
    with Image.open(previews[0]) as image:  # image | ground truth | prediction, a row per validation image
        width, height = image.size
    assert width == 3 * IMAGE_WIDTH[profile] and height % IMAGE_HEIGHT[profile] == 0 and height > 0

    for name in LOSS_NAMES[experiment]:
        assert logged(result.stdout, name) > 0
    assert "mIoU" in epoch_line(result.stdout) and "Traceback" not in result.stderr


@pytest.mark.slow
def test_later_stages_start_from_the_previous_stage(stages):
    work, runs = stages["work"], stages["runs"]
    for experiment, previous in (("dice-s2", "models/teacher-s1.pth"), ("student-dice-s2", "models/student-s1.pth")):
        assert f"init: weights from {previous}" in runs[experiment].stdout
        assert torch.load(work / "checkpoints" / experiment / "state.pth", weights_only=True)["init_from"] == previous
    assert "init: random" in runs["teacher-s1"].stdout
    assert torch.load(work / "checkpoints" / "teacher-s1" / "state.pth", weights_only=True)["init_from"] == "none"


@pytest.mark.slow
def test_distillation_leaves_the_teacher_file_unchanged(stages):
    assert sha256(stages["work"] / "models" / "teacher-s1.pth") == stages["teacher_hash"]


@pytest.mark.slow
def test_kd_to_ce_ratio_is_balanced_at_profiles_1_and_2(stages):
    ratios = {}
    for experiment in ("student-s1", "student-dice-s2"):  # profile 1 and profile 2
        stdout = stages["runs"][experiment].stdout
        ratios[experiment] = logged(stdout, "train_kd_loss") / logged(stdout, "train_ce_loss")
    assert all(0.01 <= r <= 100 for r in ratios.values()), ratios


@pytest.mark.slow
def test_a_completed_stage_is_not_trained_again(stages, tiny_cityscapes, monkeypatch, capsys):
    import train
    from training.errors import run_cli

    work = stages["work"]
    monkeypatch.chdir(work)  # the teacher's command again, in this process
    run_cli(
        train.main, ["--data-dir", str(tiny_cityscapes), *COMMON, "--profile", "low", "--experiment-id", "teacher-s1"]
    )
    out = capsys.readouterr().out
    assert "teacher-s1: already complete" in out and "epoch 1/1" not in out
    with open(work / "measurements" / "durations.csv", newline="") as file:
        assert sum(row["experiment_id"] == "teacher-s1" for row in csv.DictReader(file)) == 1


# ------------------------------------------------------------------------------------------ architectures (unit)
def test_torchvision_architecture_builds_and_runs():
    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large", 19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 19, 64, 96)


def test_torchvision_teacher_loads_and_stays_frozen(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pth"
    torch.save(build_model("lraspp_mobilenet_v3_large", 19).state_dict(), path)
    teacher = load_teacher("lraspp_mobilenet_v3_large", str(path))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    student = build_model("fast_scnn", 19)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    images, target = torch.randn(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    teacher.train()  # what the stage's model.train() would do to it
    for _ in range(2):
        total, ce, kd = distillation_loss(student(images), teacher(images), target, 4.0, 0.5)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert not teacher.model.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_checkpoint_of_another_architecture_is_refused_naming_both(tmp_path):
    path = tmp_path / "lraspp.pth"
    torch.save(build_model("lraspp_mobilenet_v3_large", 19).state_dict(), path)
    with pytest.raises(UserError, match=r"holds a lraspp_mobilenet_v3_large model, but the architecture is fast_scnn"):
        load_weights(build_model("fast_scnn"), path, "fast_scnn", "--previous-model-path")

    path = tmp_path / "fast_scnn.pth"
    torch.save(build_model("fast_scnn").state_dict(), path)
    with pytest.raises(UserError, match=r"holds a fast_scnn model, but the architecture is lraspp_mobilenet_v3_large"):
        load_teacher("lraspp_mobilenet_v3_large", str(path))


def test_checkpoint_with_another_class_count_is_refused(tmp_path):
    path = tmp_path / "five.pth"
    torch.save(fast_scnn.Model(n_classes=5).state_dict(), path)
    with pytest.raises(UserError, match=r"trained for 5 classes, expected 19"):
        load_weights(build_model("fast_scnn"), path, "fast_scnn", "--previous-model-path")
