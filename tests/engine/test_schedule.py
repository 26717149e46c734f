"""One learning-rate schedule across stages, --lr-scaling, BatchNorm recalibration (issue 23).

Learning rates are checked against numbers computed by hand from the formulas of training/engine/optim.py; the
stage tests train with the small profile table of tests/small_profile.py (4 train images, batch 2: 2 steps an
epoch) through the scripts' real command line.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import stage_args
from small_profile import run_in_process

import train
from training.engine.history import history_path, read_history
from training.engine.optim import build_optimizer, build_scheduler, stage_lr
from training.engine.recalibration import recalibrate_batchnorm
from training.engine.recipes import lr_scale
from training.engine.schedule import check_continuity
from training.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _args(schedule="linear", span=None, lr=0.1, min_lr=0.0, warmup_fraction=0.0, warmup_steps=0, **more):
    return SimpleNamespace(
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=0.0,
        lr_schedule=schedule,
        min_lr=min_lr,
        warmup_steps=warmup_steps,
        warmup_fraction=warmup_fraction,
        schedule_span=span,
        epochs=1,
        **more,
    )


def _scheduled(args, total: int, lr: float | None = None) -> list[float]:
    """The optimizer's lr before each of `total` steps and after the last one, as the stage's scheduler sets it."""
    optimizer = build_optimizer(torch.nn.Linear(2, 1).parameters(), args, lr)
    scheduler = build_scheduler(optimizer, args, total, lr)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values + [optimizer.param_groups[0]["lr"]]


@pytest.mark.parametrize(
    "schedule, shape",
    [
        ("linear", lambda u: 1 - u),
        ("cosine", lambda u: (1 + math.cos(math.pi * u)) / 2),
        ("poly", lambda u: (1 - u) ** 0.9),
    ],
)
def test_stages_with_spans_are_one_schedule_over_the_run(schedule, shape):
    # a run of 3 + 1 steps: stage 1 is 0:0.75 of the schedule (3 steps), stage 2 is 0.75:1 (1 step)
    lr, min_lr = 0.1, 0.01
    by_hand = [(lr - min_lr) * shape(t / 4) + min_lr for t in range(5)]
    first = _scheduled(_args(schedule, "0.0:0.75", lr, min_lr), 3)
    second = _scheduled(_args(schedule, "0.75:1.0", lr, min_lr), 1)
    assert first == pytest.approx(by_hand[:4], rel=1e-12)
    assert second == pytest.approx(by_hand[3:], rel=1e-12)
    assert second[0] == pytest.approx(first[-1], rel=1e-12)  # the second stage starts where the first ended


def test_without_a_span_each_stage_restarts_its_own_schedule():
    assert _scheduled(_args("linear", None), 4) == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])
    assert _scheduled(_args("cosine", None), 2) == pytest.approx([0.1, 0.05, 0.0])


def test_the_run_s_warm_up_happens_once_at_its_start():
    # warm-up over the first 0.2 of the run, from a tenth of the scheduled lr; run of 10 steps in two stages of 5
    def by_hand(t):
        u = t / 10
        value = 0.1 * (1 - u)
        return value * (0.1 + 0.9 * u / 0.2) if u < 0.2 else value

    first = _scheduled(_args("linear", "0.0:0.5", warmup_fraction=0.2), 5)
    second = _scheduled(_args("linear", "0.5:1.0", warmup_fraction=0.2), 5)
    assert first == pytest.approx([by_hand(t) for t in range(6)], rel=1e-12)
    assert first[:2] == pytest.approx([0.01, 0.1 * 0.9 * 0.55])  # 0.1 x (0.1 + 0.9 x 0.5) at u = 0.1
    assert second == pytest.approx([by_hand(t) for t in range(5, 11)], rel=1e-12)  # no second warm-up


def test_scaled_lr_keeps_the_shape_and_scales_min_lr():
    args = _args("linear", "0.5:1.0", lr=0.1, min_lr=0.02)
    # lr-scaling 0.5: peak 0.05, floor 0.01; at u = 0.5: 0.04 x 0.5 + 0.01 = 0.03
    assert stage_lr(0, 2, args, lr=0.05) == pytest.approx(0.03)
    assert _scheduled(args, 2, lr=0.05) == pytest.approx([0.03, 0.02, 0.01])


def test_lr_scaling_by_batch_and_by_pixels():
    args = SimpleNamespace(batch_size=8, reference_batch_size=32, lr_scaling="linear")
    assert lr_scale(args, 2, (1024, 512), (512, 256))[0] == pytest.approx(16 / 32)
    args.lr_scaling = "pixels"  # 16 images of 1024x512 against 32 of 512x256: 16 x 4 / 32 = 2
    factor, how = lr_scale(args, 2, (1024, 512), (512, 256))
    assert factor == pytest.approx(2.0) and "profile 1's patch" in how
    args.lr_scaling = "none"
    assert lr_scale(args, 2, (1024, 512), (512, 256)) == (1.0, "")


def _card(span, kind="linear", lr=0.1, min_lr=0.0, warmup_fraction=0.0):
    return {"kind": kind, "span": span, "lr": lr, "min_lr": min_lr, "warmup_fraction": warmup_fraction}


def test_a_stage_must_continue_the_span_its_starting_model_ended():
    args = _args("linear", "0.5:1.0", previous_model_path="models/s1.pth")
    args.init_from = "models/s1.pth"
    check_continuity(args, _card([0.0, 0.5]))  # continues: nothing said
    with pytest.raises(UserError, match=r"ended its run's schedule at 0.4 .*expected --schedule-span 0.4:B"):
        check_continuity(args, _card([0.0, 0.4]))
    with pytest.raises(UserError, match="has no model card recording a schedule span"):
        check_continuity(args, _card(None))
    with pytest.raises(UserError, match="--lr-schedule linear: .* --lr-schedule cosine"):
        check_continuity(args, _card([0.0, 0.5], kind="cosine"))
    with pytest.raises(UserError, match="--lr 0.1: .* --lr 0.2"):
        check_continuity(args, _card([0.0, 0.5], lr=0.2))
    args.init_from = "none"
    with pytest.raises(UserError, match="starts from random weights"):
        check_continuity(args, None)


def test_recalibration_averages_the_batches_statistics_with_equal_weights():
    torch.manual_seed(0)
    layer = torch.nn.BatchNorm2d(3, momentum=0.1)
    layer.running_mean.fill_(5.0)
    batches = [torch.randn(2, 3, 4, 4) * (i + 1) + i for i in range(3)]
    layer.eval()
    assert recalibrate_batchnorm(layer, batches) == 3
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches])
    assert torch.allclose(layer.running_mean, means.mean(0), atol=1e-6)
    assert torch.allclose(layer.running_var, variances.mean(0), atol=1e-5)
    assert layer.momentum == 0.1 and not layer.training  # put back as it was
    layer.running_mean.fill_(7.0)
    assert recalibrate_batchnorm(layer, []) == 0 and torch.all(layer.running_mean == 7.0)  # no batch: untouched
    cut_short = recalibrate_batchnorm(layer, batches[:1], expected=3)  # a pass stopped after one batch of three
    assert cut_short == 1 and torch.all(layer.running_mean == 7.0) and layer.momentum == 0.1


@pytest.mark.slow
def test_learning_rate_in_history_is_continuous_across_stages(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    """Three stages of one linear schedule (2 + 2 epochs of 2 steps, then a recalibration-only stage): history.csv's
    learning_rate (the lr after each epoch's last step) follows 0.001 x (1 - epochs done / 4) across the stages."""
    monkeypatch.chdir(tmp_path)
    linear = ("--lr-schedule", "linear", "--schedule-span")
    assert run_in_process(train, stage_args(tiny_cityscapes, 2, *linear, "0:0.5", experiment="one"), monkeypatch) == 0
    after_one = ("--previous-model-path", "models/one.pth")
    refused = stage_args(tiny_cityscapes, 2, *linear, "0.4:1", *after_one, experiment="two")
    assert run_in_process(train, refused, monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --schedule-span 0.4:1.0: starts at 0.4, but --previous-model-path models/one.pth ended its run's "
        "schedule at 0.5 (its model card); expected --schedule-span 0.5:B"
    )
    second = stage_args(tiny_cityscapes, 2, *linear, "0.5:1", *after_one, experiment="two")
    assert run_in_process(train, second, monkeypatch) == 0
    lrs = [
        float(row["learning_rate"])
        for name in ("one", "two")
        for row in read_history(history_path(f"checkpoints/{name}"))
    ]
    assert lrs == pytest.approx([0.00075, 0.0005, 0.00025, 0.0], abs=1e-15)
    cards = [json.loads((tmp_path / "models" / f"{name}.json").read_text())["schedule"] for name in ("one", "two")]
    assert [c["span"] for c in cards] == [[0.0, 0.5], [0.5, 1.0]]
    assert [c[key] for c in cards for key in ("lr_start", "lr_end")] == pytest.approx([0.001, 0.0005, 0.0005, 0.0])

    # a test-resolution stage: no epoch, BatchNorm statistics from 2 whole-image batches; mIoU before and after
    capsys.readouterr()
    recalibrate = ("--whole-images", "--bn-recalibrate", "2", "--previous-model-path", "models/two.pth")
    assert run_in_process(train, stage_args(tiny_cityscapes, 0, *recalibrate, experiment="three"), monkeypatch) == 0
    (row,) = read_history(history_path("checkpoints/three"))
    card = json.loads((tmp_path / "models" / "three.json").read_text())
    record = card["test_resolution"]
    assert row["epoch"] == "0" and row["bn_recalibrate_batches"] == "2"
    assert float(row["learning_rate"]) == 0.0  # no step: the lr where stage two's schedule ended
    assert float(row["valid_miou_before_recalibration"]) == pytest.approx(record["miou_before"])
    assert float(row["valid_miou"]) == pytest.approx(record["miou_after"]) and record["input_size"] == "256x128"
    assert card["schedule"]["span"] == [0.5, 1.0]  # a stage without steps keeps its starting model's place
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("test resolution"))
    assert f"{record['miou_before']:.4f} before, {record['miou_after']:.4f} after BatchNorm recalibration" in line
    # the recalibrated statistics differ from the starting model's, the learned weights do not
    before = torch.load(tmp_path / "models" / "two.pth", weights_only=True)
    after = torch.load(tmp_path / "models" / "three.pth", weights_only=True)
    means = [k for k in before if k.endswith("running_mean")]
    assert means and any(not torch.equal(before[k], after[k]) for k in means)
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(".weight"))


@pytest.mark.slow
def test_a_stop_during_recalibration_saves_the_starting_statistics_and_the_resume_equals_an_uninterrupted_stage(
    tiny_cityscapes, tmp_path, monkeypatch
):
    """SIGUSR1 after the first of three recalibration batches: the state saved holds the BatchNorm statistics the
    stage started from (not those of one batch), and the resumed stage records the same mIoU before recalibration
    and ends with the same model as a stage that was never stopped."""
    import signal

    import training.engine.loop as loop

    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, stage_args(tiny_cityscapes, 1, experiment="start"), monkeypatch) == 0
    recalibrate = ("--bn-recalibrate", "3", "--previous-model-path", "models/start.pth")
    to_device = loop.train_batch_to_device

    def stop_after_the_first_batch(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)  # the stage reads it before the next batch
        return to_device(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(loop, "train_batch_to_device", stop_after_the_first_batch)
        stopped = stage_args(tiny_cityscapes, 0, *recalibrate, experiment="stopped")
        assert run_in_process(train, stopped, monkeypatch) == 75
    state = torch.load(tmp_path / "checkpoints" / "stopped" / "state.pth", weights_only=True)
    start = torch.load(tmp_path / "models" / "start.pth", weights_only=True)
    assert state["test_resolution"] is None  # the test-resolution start is still to do
    statistics = [key for key in start if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and all(torch.equal(state["model"][key], start[key]) for key in statistics)

    assert run_in_process(train, stage_args(tiny_cityscapes, 0, *recalibrate, experiment="stopped"), monkeypatch) == 0
    assert run_in_process(train, stage_args(tiny_cityscapes, 0, *recalibrate, experiment="whole"), monkeypatch) == 0
    cards = [json.loads((tmp_path / "models" / f"{name}.json").read_text()) for name in ("stopped", "whole")]
    records = [card["test_resolution"] for card in cards]
    assert records[0]["bn_recalibrate"] == records[1]["bn_recalibrate"] == 3
    assert records[0]["miou_before"] == records[1]["miou_before"]  # measured on the starting model both times
    assert records[0]["miou_after"] == pytest.approx(records[1]["miou_after"], abs=1e-9)
    resumed, whole = (torch.load(tmp_path / "models" / f"{n}.pth", weights_only=True) for n in ("stopped", "whole"))
    assert all(torch.allclose(resumed[key].float(), whole[key].float(), atol=1e-6) for key in whole)


@pytest.mark.slow
def test_lr_scaling_is_logged_and_recorded_and_a_dist_student_trains(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    import train_distillation

    monkeypatch.chdir(tmp_path)
    # profile 2 of the small table: 2 patches of 224x112 against 8 of profile 1's 192x96
    scaled = ("--profile", "medium", "--lr-scaling", "pixels", "--reference-batch-size", "8")
    assert run_in_process(train, stage_args(tiny_cityscapes, 1, *scaled, experiment="t"), monkeypatch) == 0
    factor = 2 * 224 * 112 / (8 * 192 * 96)
    recipe = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("recipe"))
    assert (
        f"lr scaling pixels: lr {0.001 * factor:g} = 0.001 x pixels per total batch 2 x 224x112 / 8 x 192x96" in recipe
    )
    card = json.loads((tmp_path / "models" / "t.json").read_text())
    assert card["schedule"]["lr_scale"] == pytest.approx(factor) and card["args"]["lr"] == 0.001

    dist = ("--trained-teacher-model-path", "models/t.pth", "--kd-loss", "dist", "--dist-beta", "0.5")
    assert run_in_process(train_distillation, stage_args(tiny_cityscapes, 1, *dist, experiment="s"), monkeypatch) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert "train_dist_loss" in line and "train_kd_loss" not in line
    args = json.loads((tmp_path / "models" / "s.json").read_text())["args"]
    assert (args["kd_loss"], args["dist_beta"], args["dist_gamma"]) == ("dist", 0.5, 1.0)
