"""python -m training.report (issue 16): the graphs show the series they claim to, read back from matplotlib."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage
from small_profile import run_in_process

import train
from training.data.dataset import CLASS_NAMES
from training.engine.history import read_history, record_epoch
from training.report import figures as report

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def line(ax, label):
    (found,) = [item for item in ax.get_lines() if item.get_label() == label]
    return found.get_xdata(), found.get_ydata()


def stage_boundaries(ax) -> list[float]:
    return sorted(
        float(item.get_xdata()[0])
        for item in ax.get_lines()
        if item.get_linestyle() == "--" and len(set(item.get_xdata())) == 1
    )


def test_ids_are_grouped_into_runs_and_stages():
    assert report.run_of("fastscnn-training-experiment-07") == ("run 2 (train.py, weight decay 1e-4)", 2)
    assert report.run_of("demo-fastscnn-training-experiment-12") == (
        "demo-run 3 (train_distillation.py, no weight decay)",
        2,
    )
    assert report.run_of("cwd-student-03") == ("cwd-student", 3)
    assert report.run_of("baseline") == ("baseline", 1)


# ------------------------------------------------------------------------------------------- a synthetic workplace
@pytest.fixture
def workplace(tmp_path):
    """Two stages of one run and a one-stage run, as history.csv/state.pth, durations.csv and efficiency.csv."""
    checkpoints, measurements = tmp_path / "checkpoints", tmp_path / "measurements"
    histories = {
        "exp-01": ([2.0, 1.5, 1.2], [0.10, 0.20, 0.15], "low"),
        "exp-02": ([1.1, 0.9], [0.30, 0.35], "medium"),
        "other": ([3.0], [0.05], "low"),
    }
    for experiment_id, (losses, mious, profile) in histories.items():
        for epoch, (loss, miou) in enumerate(zip(losses, mious), 1):
            record_epoch(
                checkpoints / experiment_id / "history.csv",
                {"profile": profile, "epoch": epoch, "train_loss": loss, "valid_miou": miou},
            )
    matrix = torch.zeros(19, 19, dtype=torch.int64)
    matrix[0, 0], matrix[0, 1], matrix[1, 1], matrix[2, 0] = 30, 10, 20, 5  # road, sidewalk, building rows
    torch.save(
        {"script": "train.py", "args": {"profile": "medium"}, "best_epoch": 2, "best_confusion_matrix": matrix},
        checkpoints / "exp-02" / "state.pth",
    )
    measurements.mkdir()
    rows = [
        ("exp-01", "low", "10.0", "3.33"),
        ("exp-02", "medium", "30.0", "15.00"),
        ("exp-02", "medium", "8", "4"),
        ("other", "low", "2.0", "2.00"),
    ]
    with open(measurements / "durations.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["experiment_id", "profile", "epochs", "wall_time_s", "s_per_epoch", "device", "best_miou"])
        writer.writerows([(i, p, "2", w, s, "cpu", "0.3") for i, p, w, s in rows])
    with open(measurements / "efficiency.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["model", "resolution", "flops", "latency_ms_plain", "latency_ms_deploy", "latency_ms_onnxruntime", "miou"]
        )
        writer.writerows(
            [
                ("a", "288x576", "1131107072", "20", "13", "", "0.62"),
                ("a", "1024x2048", "14294361088", "208", "93", "122", "0.62"),
                ("b", "1024x2048", "14294361088", "210", "95", "", ""),
            ]
        )  # no mIoU: not plotted
    return checkpoints, measurements, matrix


def test_report_files_and_what_each_figure_shows(workplace):
    checkpoints, measurements, matrix = workplace
    written = report.build_report(checkpoints, measurements)
    assert sorted(written) == [
        "class_iou",
        "confusion",
        "curriculum:exp",
        "curriculum:other",
        "durations",
        "efficiency",
        "report",
    ]
    for path in written.values():
        assert path.exists() and path.stat().st_size > 0
    assert {p.name for p in (measurements / "graphs").iterdir()} == {
        "curriculum-exp.png",
        "curriculum-other.png",
        "durations.png",
        "efficiency.png",
        "confusion-exp-02.png",
        "class-iou-exp-02.png",
    }
    text = (measurements / "report.md").read_text()
    for path in (measurements / "graphs").iterdir():
        assert f"](graphs/{path.name})" in text
    assert "1 row(s) of efficiency.csv have no mIoU" in text

    runs = report.group_runs(report.load_stages(checkpoints))
    assert [(run.name, [s.experiment_id for s in run.stages]) for run in runs] == [
        ("exp", ["exp-01", "exp-02"]),
        ("other", ["other"]),
    ]
    fig = report.curriculum_figure(runs[0])
    loss_ax, miou_ax = fig.axes
    x, y = line(loss_ax, "train_loss")
    assert list(x) == [1, 2, 3, 4, 5] and list(y) == [2.0, 1.5, 1.2, 1.1, 0.9]
    x, y = line(miou_ax, "valid_miou")
    assert list(x) == [1, 2, 3, 4, 5] and list(y) == [0.10, 0.20, 0.15, 0.30, 0.35]
    assert stage_boundaries(miou_ax) == [3.5]
    assert [t.get_text() for t in loss_ax.texts] == ["stage 1\nlow", "stage 2\nmedium"]
    (star,) = [item for item in miou_ax.get_lines() if item.get_marker() == "*"]  # exp-02's best epoch (state.pth)
    assert list(star.get_xdata()) == [5] and list(star.get_ydata()) == [0.35]

    per_epoch, total = report.durations_figure(report.read_csv(measurements / "durations.csv")).axes
    heights = {c.get_label(): [b.get_height() for b in c] for c in per_epoch.containers}
    assert heights == {"exp": [3.33, 4.0], "other": [2.0]}  # exp-02 trained again: its last row counts
    assert sorted(b.get_height() for b in total.patches) == [2.0, 8.0, 10.0]

    cost_ax, time_ax = report.efficiency_figure(
        report.efficiency_points(report.read_csv(measurements / "efficiency.csv"))
    ).axes
    (points,) = [c for c in cost_ax.collections if isinstance(c, PathCollection)]
    assert np.allclose(points.get_offsets(), [[1.131107072, 0.62], [14.294361088, 0.62]])
    assert [t.get_text() for t in cost_ax.texts] == ["a @ 288x576", "a @ 1024x2048"]
    offsets = {c.get_label(): c.get_offsets().tolist() for c in time_ax.collections}
    assert offsets == {
        "plain": [[20, 0.62], [208, 0.62]],
        "deploy": [[13, 0.62], [93, 0.62]],
        "ONNX Runtime": [[122, 0.62]],
    }

    names = list(CLASS_NAMES)
    (image,) = [
        a
        for a in report.confusion_figure("exp-02", matrix.numpy(), names).axes[0].get_children()
        if isinstance(a, AxesImage)
    ]
    shown = np.ma.filled(image.get_array(), np.nan)
    assert shown[0, 0] == pytest.approx(0.75) and shown[0, 1] == pytest.approx(0.25) and shown[2, 0] == 1.0
    assert np.isnan(shown[3]).all()  # a class without ground-truth pixels has no row to normalise
    bars_ax = report.class_iou_figure("exp-02", matrix.numpy(), names).axes[0]
    bars = {t.get_text(): p.get_height() for t, p in zip(bars_ax.get_xticklabels(), bars_ax.patches)}
    # IoU = tp / (gt + predicted - tp): road 30 / (40 + 35 - 30), sidewalk 20 / (20 + 30 - 20), building 0 / 5
    assert bars == pytest.approx({"road": 30 / 45, "sidewalk": 20 / 30, "building": 0.0})


def test_unknown_experiment_is_one_line_error(workplace, tmp_path):
    checkpoints, measurements, _ = workplace
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.report",
            "--checkpoints",
            str(checkpoints),
            "--measurements",
            str(measurements),
            "--experiment",
            "nope",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --experiment nope: no checkpoints/nope/state.pth with a best confusion matrix (expected one of: exp-02)"
    )


def test_an_empty_workplace_gives_a_report_that_says_so(tmp_path):
    (tmp_path / "measurements").mkdir()
    written = report.build_report(tmp_path / "checkpoints", tmp_path / "measurements")
    assert list(written) == ["report"]
    assert "no stage has trained here yet" in written["report"].read_text()


# ---------------------------------------------------------------------------------------- a real two-stage run
@pytest.mark.slow
def test_report_of_a_real_two_stage_run(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["--data-dir", str(tiny_cityscapes), "--epochs", "2", "--batch-size", "2", "--num-workers", "0"]
    assert (
        run_in_process(
            train, [*common, "--profile", "low", "--experiment-id", "fastscnn-training-experiment-01"], monkeypatch
        )
        == 0
    )
    assert (
        run_in_process(
            train,
            [
                *common,
                "--profile",
                "medium",
                "--experiment-id",
                "fastscnn-training-experiment-02",
                "--previous-model-path",
                "models/fastscnn-training-experiment-01.pth",
            ],
            monkeypatch,
        )
        == 0
    )
    result = subprocess.run(
        [sys.executable, "-m", "training.report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    graphs = tmp_path / "measurements" / "graphs"
    assert "No `measurements/efficiency.csv` yet" in (tmp_path / "measurements" / "report.md").read_text()

    histories = [
        read_history(tmp_path / "checkpoints" / f"fastscnn-training-experiment-0{s}" / "history.csv") for s in (1, 2)
    ]
    (run,) = report.group_runs(report.load_stages(tmp_path / "checkpoints"))
    assert [s.profile for s in run.stages] == ["low", "medium"]
    loss_ax, miou_ax = report.curriculum_figure(run).axes
    x, y = line(miou_ax, "valid_miou")
    assert list(x) == [1, 2, 3, 4]
    assert list(y) == [float(row["valid_miou"]) for history in histories for row in history]
    assert list(line(loss_ax, "train_loss")[1]) == [float(r["train_loss"]) for h in histories for r in h]
    assert stage_boundaries(loss_ax) == [2.5]

    states = [
        torch.load(tmp_path / "checkpoints" / f"fastscnn-training-experiment-0{s}" / "state.pth", weights_only=True)
        for s in (1, 2)
    ]
    best = max((1, 2), key=lambda s: states[s - 1]["best_miou"])
    state, history = states[best - 1], histories[best - 1]
    assert {p.name for p in graphs.iterdir()} == {  # the confusion matrix of the best stage by default
        "curriculum-run-1-train-py-no-weight-decay.png",
        "durations.png",
        f"confusion-fastscnn-training-experiment-0{best}.png",
        f"class-iou-fastscnn-training-experiment-0{best}.png",
    }
    best_row = history[state["best_epoch"] - 1]
    bars_ax = report.class_iou_figure("x", state["best_confusion_matrix"].numpy(), list(CLASS_NAMES)).axes[0]
    bars = {t.get_text(): p.get_height() for t, p in zip(bars_ax.get_xticklabels(), bars_ax.patches)}
    logged = {k.removeprefix("valid_iou/"): float(v) for k, v in best_row.items() if k.startswith("valid_iou/") and v}
    assert bars == pytest.approx(logged) and len(bars) >= 2
    assert not any(math.isnan(v) for v in bars.values())

    per_epoch, _ = report.durations_figure(report.read_csv(tmp_path / "measurements" / "durations.csv")).axes
    (bars,) = per_epoch.containers
    with open(tmp_path / "measurements" / "durations.csv", newline="") as file:
        assert [b.get_height() for b in bars] == [float(row["s_per_epoch"]) for row in csv.DictReader(file)]


def test_the_class_figures_name_the_classes_the_stage_trained_on(tmp_path):
    """A stage of a folder data set: its state records its 5 classes; the report's confusion matrix and per-class
    IoU are labelled with them (a state from before --dataset: Cityscapes' names)."""
    from training.data.classes import folder_class_set

    five = folder_class_set(("road", "car", "tree", "sky", "person"), ((1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4),
                                                                       (5, 5, 5)), 255, None, "test")  # fmt: skip
    checkpoints, measurements = tmp_path / "checkpoints", tmp_path / "measurements"
    record_epoch(checkpoints / "five-01" / "history.csv", {"profile": "low", "epoch": 1, "valid_miou": 0.5})
    matrix = torch.diag(torch.tensor([4, 3, 0, 2, 1]))
    matrix[2, 1] = 6  # every 'tree' pixel predicted 'car'
    state = {"best_epoch": 1, "best_confusion_matrix": matrix, "classes": five.to_dict()}
    torch.save(state, checkpoints / "five-01" / "state.pth")
    written = report.build_report(checkpoints, measurements)
    (record,) = report.load_stages(checkpoints)
    assert record.class_names == ["road", "car", "tree", "sky", "person"]
    ax = report.confusion_figure("five-01", matrix.numpy(), record.class_names).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == record.class_names
    bars_ax = report.class_iou_figure("five-01", matrix.numpy(), record.class_names).axes[0]
    bars = {t.get_text(): p.get_height() for t, p in zip(bars_ax.get_xticklabels(), bars_ax.patches)}
    assert bars == pytest.approx({"road": 1.0, "car": 3 / 9, "tree": 0.0, "sky": 1.0, "person": 1.0})
    assert written["confusion"].exists() and written["class_iou"].exists()

    del state["classes"]  # written before other data sets: Cityscapes' names where they fit the matrix
    torch.save(state, checkpoints / "five-01" / "state.pth")
    assert report.load_stages(checkpoints)[0].class_names == [f"class {i}" for i in range(5)]


def test_a_test_resolution_stage_has_a_slot_of_its_own_and_its_epoch_0_model_is_starred(tmp_path):
    """A stage of 0 epochs (--bn-recalibrate only) writes one history row at epoch 0: it is drawn after the previous
    stage's last epoch (not on it), marked as a stage, and starred as its best when its state says epoch 0."""
    checkpoints, measurements = tmp_path / "checkpoints", tmp_path / "measurements"
    for epoch, (loss, miou) in enumerate([(2.0, 0.10), (1.5, 0.20), (1.2, 0.25)], 1):
        record_epoch(
            checkpoints / "exp-01" / "history.csv",
            {"profile": "high", "epoch": epoch, "train_loss": loss, "valid_miou": miou},
        )
    record_epoch(
        checkpoints / "exp-02" / "history.csv",
        {"profile": "high", "epoch": 0, "train_loss": "", "valid_miou": 0.27, "valid_miou_before_recalibration": 0.25},
    )
    torch.save({"script": "train.py", "best_epoch": 0}, checkpoints / "exp-02" / "state.pth")
    (run,) = report.group_runs(report.load_stages(checkpoints))
    loss_ax, miou_ax = report.curriculum_figure(run).axes
    x, y = line(miou_ax, "valid_miou")
    assert list(x) == [1, 2, 3, 4] and list(y) == [0.10, 0.20, 0.25, 0.27]
    assert stage_boundaries(miou_ax) == [3.5] and miou_ax.get_xlim() == (0.5, 4.5)
    assert [t.get_text() for t in loss_ax.texts] == ["stage 1\nhigh", "stage 2\nhigh"]
    (star,) = [item for item in miou_ax.get_lines() if item.get_marker() == "*"]
    assert list(star.get_xdata()) == [4] and list(star.get_ydata()) == [0.27]
    measurements.mkdir()
    report.build_report(checkpoints, measurements, None, None)
    text = (measurements / "report.md").read_text()
    assert "| 2 | exp-02 | high | 0 | 0.2700 | 0 |" in text, text
