"""python -m training.compare: comparison files, budgets, plans, results and the report (docs/comparisons.md)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main

from training.compare.budget import StageCost, check_within, fit_epochs, images_per_epoch
from training.compare.config import load_comparison
from training.compare.report import table, write_report
from training.compare.results import read_results, summary_rows
from training.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs
REPO = Path(__file__).resolve().parents[2]
DEMO_TOML = REPO / "comparisons" / "demo.toml"


def compare(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command as a user runs it; on a time-out its whole process group (the stages too) is ended."""
    argv = [sys.executable, "-m", "training.compare", *args]
    process = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


# ------------------------------------------------------------------------------------------ budget arithmetic
def test_stage_flop_is_two_times_images_times_three_forwards_plus_teacher():
    cost = StageCost(
        "x", "low", (64, 32), (72, 36), images_per_epoch=28, student_macs=1000, teacher_macs=500, fixed_macs=7
    )
    assert cost.flop_per_epoch == 2 * 28 * (3 * 1000 + 500)
    assert cost.flop(3) == 3 * 2 * 28 * 3500 + 2 * 7


def test_images_per_epoch_drops_the_last_partial_batch():
    assert images_per_epoch(30, 4) == 28
    assert images_per_epoch(32, 4) == 32


def test_fit_epochs_takes_floor_or_ceil_of_the_share_closest_to_the_budget():
    # weights 1:1, costs 1 and 4 per epoch, budget 11: k = 11 / 5 = 2.2, so 2 or 3 epochs each;
    # totals 2+8 = 10, 2+12 = 14, 3+8 = 11, 3+12 = 15: the closest is 3 and 2
    assert fit_epochs([1, 1], [1.0, 4.0], [0.0, 0.0], 11.0) == ([3, 2], 11.0)


def test_fit_epochs_counts_fixed_costs_once_and_keeps_a_stage_of_weight_zero_at_zero():
    # fixed cost 1 of stage 1: k = (9 - 1) / (2 x 1 + 1 x 2) = 2 -> epochs 4 and 2, total 4 + 1 + 4
    assert fit_epochs([2, 1], [1.0, 2.0], [1.0, 0.0], 9.0) == ([4, 2], 9.0)
    # a recalibration-only stage (weight 0, fixed cost 2): k = (10 - 2) / 1 = 8
    assert fit_epochs([0, 1], [5.0, 1.0], [2.0, 0.0], 10.0) == ([0, 8], 10.0)


def test_a_budget_beyond_five_percent_is_refused_in_one_line():
    check_within("c.toml: arm 'a'", 104.0, 100.0, "s", [1])
    with pytest.raises(UserError, match=r"arm 'a': the closest epochs \(1\+2\) reach 106.0 s, \+6.0% from"):
        check_within("c.toml: arm 'a'", 106.0, 100.0, "s", [1, 2])


# ------------------------------------------------------------------------------------------ comparison files
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


TWO_ARMS = """
budget = { kind = "compute", reference = "a" }
[[arms]]
name = "a"
script = "train.py"
stages = [{ profile = 5, epochs = 4 }]
[[arms]]
name = "b"
run = 1
"""


def test_a_comparison_file_declares_arms_inline_or_by_run_file(tmp_path):
    comparison = load_comparison(write(tmp_path, TWO_ARMS))
    single, run1 = comparison.arms
    assert (single.name, single.run.stages, single.source) == (
        "a",
        [{"profile": 5, "epochs": 4, "experiment-id": "a-01"}],
        "inline",
    )
    assert [stage["profile"] for stage in run1.run.stages] == [1, 2, 3, 4, 5]
    assert comparison.budget.reference == "a"


@pytest.mark.parametrize(
    "change, message",
    [
        (("budget = {", "colour = 1\nbudget = {"), "unknown key 'colour'"),
        (('reference = "a"', 'reference = "z"'), "reference = 'z': no such arm"),
        (('reference = "a"', 'reference = "a", tflop = 3'), "either reference"),
        (('kind = "compute"', 'kind = "money"'), "kind: compute or wall-time"),
        (("run = 1", "run = 77"), "run = 77: no runs/77.toml"),
        (('name = "b"', 'name = "a"'), "two arms are named 'a'"),
        (("epochs = 4 }", "epochs = 4, colour = 2 }\n"), None),  # a flag name: checked when planned (below)
        (("run = 1", "run = 1\nflags = { epochs = 3 }"), "'epochs' is set by the comparison"),
        (("epochs = 4", "epochs = -1"), "epochs = -1: expected a whole number >= 0"),
    ],
)
def test_bad_comparison_files_are_refused_in_one_line(tmp_path, change, message):
    path = write(tmp_path, TWO_ARMS.replace(*change))
    if message is None:
        load_comparison(path)
        return
    with pytest.raises(UserError, match=message):
        load_comparison(path)


def test_the_command_refuses_a_bad_file_with_one_error_line_and_exit_2(tmp_path):
    done = compare(str(write(tmp_path, TWO_ARMS.replace("epochs = 4 }", "epochs = 4, colour = 2 }"))), "--dry-run")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "'colour' is not a flag of train.py" in done.stderr
    missing = compare(str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "none.toml" in missing.stderr


# ------------------------------------------------------------------------------------------ the plan
@pytest.fixture(scope="module")
def demo_set(tmp_path_factory) -> Path:
    from training.compare.demo import demo_data

    return demo_data(tmp_path_factory.mktemp("compare"))


def thop_flop_per_epoch(size_wh: tuple[int, int], images: int) -> float:
    """Independent count: thop.profile on a real (CPU) Fast-SCNN of the demo's 5 classes, eval mode."""
    import thop
    import torch

    import fast_scnn

    model = fast_scnn.Model(in_channels=3, n_classes=5).eval()
    macs, _ = thop.profile(model, inputs=(torch.zeros(1, 3, size_wh[1], size_wh[0]),), verbose=False)
    return 2.0 * images * 3 * macs


def test_the_demo_plan_gives_both_arms_the_budget_within_five_percent(demo_set):
    from training.compare.demo import demo_comparison
    from training.compare.plan import plan_comparison

    plan = plan_comparison(demo_comparison(6), demo_set.parent, ["--data-dir", str(demo_set)]).to_dict()
    single, curriculum, one_schedule = plan["arms"]
    stage = single["stages"][0]
    assert tuple(stage["input_size"]) == (192, 96)  # profile 5 of the 256x128 images: patch 192x96
    # 32 training images, batch 4: 32 images an epoch; 6 epochs set the budget
    assert stage["flop_per_epoch"] == pytest.approx(thop_flop_per_epoch((192, 96), 32), rel=1e-6)
    assert plan["budget"]["amount"] == pytest.approx(6 * stage["flop_per_epoch"])
    assert [s["profile"] for s in curriculum["stages"]] == ["low", "medium", "high", "higher", "highest"]
    spent = sum(s["epochs"] * s["flop_per_epoch"] + s["fixed_flop"] for s in curriculum["stages"])
    assert abs(spent / plan["budget"]["amount"] - 1) <= 0.05
    assert curriculum["deviation"] == pytest.approx(spent / plan["budget"]["amount"] - 1)
    assert all(s["epochs"] >= 1 for s in curriculum["stages"])
    # the third arm: one schedule whose spans follow the budget's epochs, and a recalibration-only last stage whose
    # 8 batches of 4 whole 256x128 images are its fixed cost (forward passes only)
    recalibration = one_schedule["stages"][-1]
    assert (recalibration["epochs"], tuple(recalibration["input_size"])) == (0, (256, 128))
    assert recalibration["fixed_flop"] == pytest.approx(thop_flop_per_epoch((256, 128), 8 * 4) / 3, rel=1e-6)
    epochs = [s["epochs"] for s in one_schedule["stages"]]
    spent = sum(s["epochs"] * s["flop_per_epoch"] + s["fixed_flop"] for s in one_schedule["stages"])
    assert abs(spent / plan["budget"]["amount"] - 1) <= 0.05
    ends = [sum(epochs[: k + 1]) / sum(epochs) for k in range(5)]
    for stage, start, end in zip(one_schedule["stages"], [0.0, *ends], ends):
        span = stage["command"][stage["command"].index("--schedule-span") + 1]
        assert [float(x) for x in span.split(":")] == pytest.approx([start, end], abs=1e-6)
    assert "--schedule-span" not in recalibration["command"] and "--bn-recalibrate" in recalibration["command"]


def test_a_dry_run_prints_one_slurm_chain_per_arm(tmp_path, demo_set):
    out = tmp_path / "out"
    done = compare(str(DEMO_TOML), "--slurm", "--dry-run", "--output-dir", str(out), "--", "--data-dir", str(demo_set))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("job")]
    assert len(lines) == 1 + 5 + 6
    assert f"--output-dir {out}/single" in lines[0] and f"--output-dir {out}/curriculum" in lines[1]
    assert "--dependency" not in lines[1] and "--dependency" in lines[2]
    assert not out.exists()  # a dry run writes nothing


# ------------------------------------------------------------------------------------------ results and report
HAND_PLAN = {
    "comparison": "comparisons/hand.toml",
    "budget": {"kind": "compute", "reference": None, "amount": 10e12, "unit": "FLOP"},
    "arms": [
        {
            "name": "a",
            "folder": "a",
            "stages": [{"experiment_id": "a-01", "epochs": 2, "flop_per_epoch": 5e12, "fixed_flop": 0.0}],
        },
        {
            "name": "b",
            "folder": "b",
            "stages": [
                {"experiment_id": "b-01", "epochs": 1, "flop_per_epoch": 2e12, "fixed_flop": 1e12},
                {"experiment_id": "b-02", "epochs": 2, "flop_per_epoch": 3e12, "fixed_flop": 0.0},
            ],
        },
    ],
}
# (arm folder, experiment id): [(epoch, mIoU, seconds)]
HAND_HISTORIES = {
    ("a", "a-01"): [(1, 0.40, 10.0), (2, 0.50, 12.0)],
    ("b", "b-01"): [(1, 0.30, 3.0)],
    ("b", "b-02"): [(1, 0.48, 5.0), (2, 0.46, 6.0)],
}


def write_histories(out: Path, histories: dict) -> None:
    from training.engine.history import record_epoch

    for (folder, experiment), rows in histories.items():
        for epoch, miou, seconds in rows:
            record_epoch(
                out / folder / "checkpoints" / experiment / "history.csv",
                {"epoch": epoch, "valid_miou": miou, "seconds": seconds, "learning_rate": 1e-3},
            )


def test_summary_rows_from_histories_by_hand(tmp_path):
    write_histories(tmp_path, HAND_HISTORIES)
    rows = {row["arm"]: row for row in summary_rows(HAND_PLAN, read_results(tmp_path, HAND_PLAN))}
    # a: 5 + 5 TFLOP, 10 + 12 s, best 0.50; b: (1 + 2), + 3, + 3 TFLOP; 3, + 5, + 6 s; best 0.48
    # target 0.95 x 0.50 = 0.475: a reaches it at its epoch 2 (10 TFLOP, 22 s), b at stage 2's epoch 1 (6 TFLOP, 8 s)
    assert rows["a"]["train_tflop"] == pytest.approx(10) and rows["a"]["wall_time_s"] == pytest.approx(22)
    assert rows["b"]["train_tflop"] == pytest.approx(9) and rows["b"]["wall_time_s"] == pytest.approx(14)
    assert (rows["a"]["best_miou"], rows["b"]["best_miou"]) == (0.50, 0.48)
    assert (rows["b"]["best_stage"], rows["b"]["best_epoch"]) == (2, 1)
    assert rows["a"]["target_miou"] == pytest.approx(0.475)
    assert (rows["a"]["tflop_to_95"], rows["a"]["wall_time_to_95_s"]) == (pytest.approx(10), pytest.approx(22))
    assert (rows["b"]["tflop_to_95"], rows["b"]["wall_time_to_95_s"]) == (pytest.approx(6), pytest.approx(8))
    assert rows["a"]["deviation_pct"] == pytest.approx(0) and rows["b"]["deviation_pct"] == pytest.approx(-10)
    assert rows["b"]["epochs"] == "1+2"


def test_an_arm_that_never_reaches_the_target_has_an_empty_cell_and_the_report_is_written(tmp_path):
    histories = {**HAND_HISTORIES, ("b", "b-02"): [(1, 0.41, 5.0), (2, 0.42, 6.0)]}
    write_histories(tmp_path, histories)
    results = read_results(tmp_path, HAND_PLAN)
    summary, figure, text = write_report(tmp_path, HAND_PLAN, results)
    with summary.open(newline="") as handle:
        rows = {row["arm"]: row for row in csv.DictReader(handle)}
    assert rows["b"]["tflop_to_95"] == "" and float(rows["a"]["tflop_to_95"]) == pytest.approx(10)
    assert float(rows["b"]["best_miou"]) == pytest.approx(0.42)
    assert figure.stat().st_size > 1000 and figure.read_bytes()[:4] == b"\x89PNG"
    assert "| b | 1+2 | 9 | 14 | 42.0 | -10.0% | not reached |" in text


def test_a_test_resolution_stage_adds_its_fixed_cost_once_and_its_epoch_0_row_as_a_point(tmp_path):
    plan = json.loads(json.dumps(HAND_PLAN))
    plan["arms"][1]["stages"].append(
        {"experiment_id": "b-03", "epochs": 0, "flop_per_epoch": 3e12, "fixed_flop": 0.5e12}
    )
    write_histories(tmp_path, {**HAND_HISTORIES, ("b", "b-03"): [(0, 0.49, 2.0)]})
    b = read_results(tmp_path, plan)[1]
    # b: 3, 6, 9 TFLOP as before, then the recalibration's 0.5 (no epoch): 9.5 TFLOP, 14 + 2 s, mIoU 0.49
    assert [(p.stage, p.epoch, p.tflop, p.seconds, p.miou) for p in b.points][-1] == (3, 0, 9.5, 16.0, 0.49)
    assert (b.tflop, b.best.miou, b.missing) == (9.5, 0.49, [])


def test_an_unfinished_stage_is_named_when_a_complete_result_is_asked_for(tmp_path):
    histories = {**HAND_HISTORIES, ("b", "b-02"): [(1, 0.48, 5.0)]}
    write_histories(tmp_path, histories)
    with pytest.raises(UserError, match=r"arm 'b': .*b-02/history.csv \(1 of 2 epochs\): not done yet"):
        read_results(tmp_path, HAND_PLAN)
    partial = read_results(tmp_path, HAND_PLAN, complete=False)
    assert [len(result.points) for result in partial] == [2, 2]
    assert table(summary_rows(HAND_PLAN, partial)).count("\n") == 3


def test_report_of_a_folder_without_a_plan_is_one_error_line(tmp_path):
    done = compare("--report", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "plan.json: no such file" in done.stderr


# ------------------------------------------------------------------------------------------ the demo, end to end
@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_its_summary_matches_the_histories(tmp_path):
    out = tmp_path / "demo"
    # 65 s on a quiet 2-core machine (12 stages); the limit leaves room for a machine shared with other jobs
    done = compare("--demo", str(out), "--demo-epochs", "3", timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    with (out / "summary.csv").open(newline="") as handle:
        rows = {row["arm"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"single", "curriculum", "one-schedule"} and (out / "comparison.png").is_file()
    best = {}
    for arm in plan["arms"]:
        tflop = seconds = 0.0
        mious = []
        for stage in arm["stages"]:
            with (out / arm["name"] / "checkpoints" / stage["experiment_id"] / "history.csv").open() as handle:
                history = list(csv.DictReader(handle))
            assert len([row for row in history if int(row["epoch"]) >= 1]) == stage["epochs"]
            tflop += (stage["epochs"] * stage["flop_per_epoch"] + stage["fixed_flop"]) / 1e12
            seconds += sum(float(row["seconds"]) for row in history)
            mious += [float(row["valid_miou"]) for row in history]
        row = rows[arm["name"]]
        assert float(row["train_tflop"]) == pytest.approx(tflop, rel=1e-5)
        assert float(row["wall_time_s"]) == pytest.approx(seconds, rel=1e-5)
        assert float(row["best_miou"]) == pytest.approx(max(mious), rel=1e-5)
        assert abs(float(row["deviation_pct"])) <= 5
        best[arm["name"]] = max(mious)
    assert float(rows["single"]["target_miou"]) == pytest.approx(0.95 * max(best.values()), rel=1e-5)
    assert math.isclose(float(rows["single"]["budget"]), float(rows["curriculum"]["budget"]))


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO / "comparisons").glob("*.toml")))
def test_every_shipped_comparison_plans_within_the_budget(tmp_path, demo_set, name, monkeypatch):
    """Each file of comparisons/ (on the demo set here: its flags after -- win over the file's); the command's main
    in this process (test_a_dry_run_prints_one_slurm_chain_per_arm runs it as a process)."""
    from training.compare.__main__ import _cli

    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    words = ["--", "--dataset", "folder", "--data-dir", str(demo_set)]
    code, stdout, stderr = run_main(
        _cli, [str(REPO / "comparisons" / name), "--dry-run", "--output-dir", str(out), *words]
    )
    assert code == 0, stderr
    offsets = re.findall(r"\(([+-][0-9.]+)% of the budget\)", stdout)
    assert len(offsets) == len(load_comparison(REPO / "comparisons" / name).arms)
    assert all(abs(float(offset)) <= 5 for offset in offsets)


WALL_TIME = """
budget = { kind = "wall-time", seconds = 100 }
flags = { dataset = "folder", device = "cpu", batch-size = 4 }
[[arms]]
name = "single"
script = "train.py"
stages = [{ profile = 5, epochs = 1 }]
[[arms]]
name = "two"
script = "train.py"
stages = [{ profile = 1, epochs = 1 }, { profile = 5, epochs = 1 }]
"""


def test_a_wall_time_budget_sets_the_epochs_from_the_estimated_seconds(tmp_path, demo_set, monkeypatch):
    from training.compare import plan as planning

    seconds = {"low": 2.0, "highest": 10.0}
    monkeypatch.setattr(planning, "probe_seconds", lambda args, cost, classes, val: seconds[cost.profile])
    comparison = load_comparison(write(tmp_path, WALL_TIME))
    plan = planning.plan_comparison(comparison, tmp_path / "out", ["--data-dir", str(demo_set)])
    # single: 100 / 10 = 10 epochs; two: k = 100 / 12 = 8.33 -> 8 or 9 each: 96, 106, 98, 108 -> 9 + 8 = 98 s
    assert [(arm.epochs, arm.planned) for arm in plan.arms] == [([10], 100.0), ([9, 8], 98.0)]


def test_the_wall_time_probe_times_a_real_training_step(demo_set):
    from training.compare.budget import StageCost, probe_seconds

    args = argparse.Namespace(device="cpu", batch_size=2, arch="fast_scnn")
    cost = StageCost("x", "low", (64, 32), (72, 36), images_per_epoch=4, student_macs=1)
    estimate = probe_seconds(args, cost, 5, 2)
    assert 0 < estimate < 60 and math.isfinite(estimate)
