"""What a stage writes and where (issue 22 items 4 and 5, issue 21 item 13): the model card beside every model, the
--output-dir that roots models/, checkpoints/ and measurements/, and the measurement sheets kept out of git, their
columns documented in measurements/README.md.

The stages run in this process with the small profile table (tests/small_profile.py).
"""

from __future__ import annotations

import csv
import functools
import re
import shutil
import subprocess

import conftest
import pytest
import torch
from conftest import REPO
from small_profile import SMALL_PROFILES, run_in_process

import fast_scnn
import train
import train_distillation
from training.data.classes import CAMVID
from training.data.dataset import CLASS_NAMES, PALETTE
from training.efficiency.counting import Cost
from training.efficiency.latency import Latency
from training.efficiency.measure import ModelResult, SizeResult
from training.efficiency.sheet import csv_rows
from training.engine.history import history_path, read_history
from training.models.card import card_path, content_hash, read_card
from training.profiles import resolve_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

ID = "card-experiment-01"


stage_args = functools.partial(conftest.stage_args, experiment=ID)


# ------------------------------------------------------------------------------------------------ the model card
def test_every_model_gets_its_card_with_the_final_epoch_as_last(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    torch.manual_seed(0)
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "models" / "start.pth")
    args = stage_args(tiny_cityscapes, 2, "--previous-model-path", "models/start.pth", "--profile", "medium")
    assert run_in_process(train, args, monkeypatch) == 0

    card = read_card(tmp_path / "models" / f"{ID}.pth")
    assert card is not None and card_path(tmp_path / "models" / f"{ID}.pth").name == f"{ID}.json"
    state = torch.load(tmp_path / "checkpoints" / ID / "state.pth", weights_only=True)
    rows = read_history(history_path(tmp_path / "checkpoints" / ID))
    (image_w, image_h), (patch_w, patch_h) = SMALL_PROFILES["medium"]
    assert (card["experiment_id"], card["script"], card["arch"], card["run"], card["stage"]) == (
        ID,
        "train.py",
        "fast_scnn",
        None,
        None,
    )
    assert card["profile"] == {
        "name": "medium",
        "number": 2,
        "image_size": f"{image_w}x{image_h}",
        "patch_size": f"{patch_w}x{patch_h}",
    }
    assert card["classes"] == {
        "dataset": "cityscapes",
        "classes": list(CLASS_NAMES),
        "palette": [[int(c) for c in PALETTE[i]] for i in range(len(CLASS_NAMES))],
    }
    assert card["args"]["lr"] == 1e-3 and card["args"]["profile"] == "medium" and "num_workers" not in card["args"]
    assert card["init_from"] == {"path": "models/start.pth", "sha256": content_hash(tmp_path / "models" / "start.pth")}
    assert card["best"]["epoch"] == state["best_epoch"] and card["best"]["miou"] == pytest.approx(state["best_miou"])
    best_row = rows[state["best_epoch"] - 1]
    assert card["best"]["mean_dice"] == pytest.approx(float(best_row["valid_mean_dice"]))
    assert card["last"]["epoch"] == 2 and card["last"]["miou"] == pytest.approx(float(rows[-1]["valid_miou"]))
    assert card["last"]["pixel_accuracy"] == pytest.approx(float(rows[-1]["valid_pixel_accuracy"]))
    assert "full" in card["protocol"] and "val" in card["protocol"]
    assert card["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", card["git_commit"])

    # "already complete" writes a card that went missing, with the final epoch as last
    card_path(tmp_path / "models" / f"{ID}.pth").unlink()
    assert run_in_process(train, args, monkeypatch) == 0
    again = read_card(tmp_path / "models" / f"{ID}.pth")
    assert again["last"] == card["last"] and again["best"] == card["best"]
    assert "already complete" in capsys.readouterr().out


def test_a_distilled_model_card_names_its_teacher(tiny_cityscapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "models" / "teacher.pth")
    args = stage_args(tiny_cityscapes, 1, "--trained-teacher-model-path", "models/teacher.pth", experiment="student")
    assert run_in_process(train_distillation, args, monkeypatch) == 0
    card = read_card(tmp_path / "models" / "student.pth")
    assert card["script"] == "train_distillation.py" and card["init_from"] is None
    assert card["args"]["trained_teacher_model_path"] == "models/teacher.pth"
    assert card["teacher"] == {
        "path": "models/teacher.pth",
        "sha256": content_hash(tmp_path / "models" / "teacher.pth"),
    }


# ------------------------------------------------------------------------------------------------ --output-dir
def test_output_dir_roots_models_checkpoints_and_measurements(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "results"
    (work / "models").mkdir(parents=True)
    monkeypatch.chdir(work)
    torch.save(fast_scnn.Model().state_dict(), work / "models" / "start.pth")  # relative to the current folder
    args = stage_args(tiny_cityscapes, 1, "--output-dir", str(out), "--previous-model-path", "models/start.pth")
    assert run_in_process(train, args, monkeypatch) == 0
    assert sorted(p.name for p in (work / "models").iterdir()) == ["start.pth"]
    assert not (work / "checkpoints").exists() and not (work / "measurements").exists()
    fast_scnn.Model().load_state_dict(torch.load(out / "models" / f"{ID}.pth", weights_only=True))
    assert read_card(out / "models" / f"{ID}.pth")["init_from"]["path"] == "models/start.pth"
    assert (out / "checkpoints" / ID / "state.pth").is_file()
    assert (out / "checkpoints" / ID / "history.csv").is_file()
    with open(out / "measurements" / "durations.csv", newline="") as file:
        assert [row["experiment_id"] for row in csv.DictReader(file)] == [ID]
    assert f"-> {out}/models/{ID}.pth" in capsys.readouterr().out

    # the same command resumes from there ("already complete"), and the output dir moves with its stage
    assert run_in_process(train, args, monkeypatch) == 0
    assert "already complete" in capsys.readouterr().out
    shutil.move(out, tmp_path / "moved")
    args[args.index(str(out))] = str(tmp_path / "moved")
    assert run_in_process(train, args, monkeypatch) == 0
    assert "already complete" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ measurements/
def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_generated_sheets_are_not_tracked_and_are_ignored():
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    for sheet in ("measurements/durations.csv", "measurements/efficiency.csv"):
        assert _git("ls-files", "--error-unmatch", sheet).returncode != 0, f"{sheet} is tracked"
        assert _git("check-ignore", "-q", "--no-index", sheet).returncode == 0, f"{sheet} is not ignored"
    assert _git("ls-files", "--error-unmatch", "measurements/resolutions.csv").returncode == 0
    assert _git("ls-files", "--error-unmatch", "measurements/README.md").returncode == 0


def documented_columns(sheet: str) -> list[str]:
    """The column names of `sheet`'s table in measurements/README.md, in order (a row may name several)."""
    text = (REPO / "measurements" / "README.md").read_text()
    section = text.split(f"## {sheet}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])]


def test_the_durations_sheet_starts_with_its_header_and_its_columns_are_documented(
    tiny_cityscapes, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes, 1), monkeypatch) == 0
    with open(tmp_path / "measurements" / "durations.csv", newline="") as file:
        header = next(csv.reader(file))
    assert header == documented_columns("durations.csv")


def test_the_efficiency_sheets_columns_are_documented_in_the_order_the_tool_writes_them():
    """measurements/README.md's efficiency.csv table names every column of a row, in order (a row with accuracy)."""
    profile = resolve_profile("low")
    size = SizeResult(profile.image_hw, Cost(1, 2, 4, 4), Latency([2.0, 3.0]), Latency([1.0, 1.5]))
    scores = {"miou": 0.5, "mean_dice": 0.6, "pixel_accuracy": 0.9}
    result = ModelResult("folded", torch.float32, "fp32", 1.0, "random", [size], scores, accuracies={"none": scores})
    (row,) = csv_rows(result, "m", "fast_scnn", profile, torch.device("cpu"), 2, "glibc", "d", "c", classes=CAMVID)
    assert (row["dataset"], row["classes"]) == ("camvid", 11)
    assert list(row) == documented_columns("efficiency.csv")
