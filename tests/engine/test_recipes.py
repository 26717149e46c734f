"""Recipes (issue 15): the optimizer and schedule module, recipe resolution, the auxiliary heads in a stage.

Schedule values are checked against numbers computed by hand; the stage tests train with the small profile table of
tests/small_profile.py (seconds per stage) through the scripts' real command line.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from small_profile import run_in_process

import fast_scnn
import train
import train_distillation
from training.engine.cli import get_args_parser
from training.engine.optim import build_optimizer, build_scheduler, poly_lr
from training.engine.recipes import resolve_recipe
from training.engine.step_monitor import skip_nonfinite_update, supports_device_skip
from training.models.auxiliary import auxiliary_loss, init_aux_heads

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _lrs(optimizer_name: str, schedule: str, lr: float, total: int, min_lr=0.0, warmup=0, steps=None):
    """The lr of each optimizer step as the stage sees it (read before the step, scheduler stepped after)."""
    model = torch.nn.Linear(2, 1)
    args = SimpleNamespace(
        optimizer=optimizer_name,
        lr=lr,
        momentum=0.9,
        weight_decay=0.0,
        lr_schedule=schedule,
        min_lr=min_lr,
        warmup_steps=warmup,
    )
    optimizer = build_optimizer(model.parameters(), args)
    scheduler = build_scheduler(optimizer, args, total)
    values = []
    for _ in range(steps or total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler, values


def test_poly_with_min_lr_and_warmup_matches_hand_computation():
    # lr 0.1, min 0.01, T = 10, warm-up 4 steps from a tenth: lr(t) = (0.09 (1 - t/10)^0.9 + 0.01) * w(t),
    # w(t) = 0.1 + 0.9 t / 4 for t < 4, else 1. Computed by hand (t, value):
    hand = [
        0.0100000,
        0.0298538,
        0.0459936,
        0.0583479,
        0.0668301,
        0.0582298,
        0.0494545,
        0.0404545,
        0.0311431,
        0.0213303,
    ]
    _, _, values = _lrs("sgd", "poly", 0.1, 10, min_lr=0.01, warmup=4)
    assert values == pytest.approx(hand, abs=1e-6)
    assert poly_lr(10, 10, 0.1, 0.01) == pytest.approx(0.01) and poly_lr(12, 10, 0.1, 0.01) == pytest.approx(0.01)


def test_poly_without_min_lr_and_warmup_is_the_previous_polynomial_lr():
    _, _, values = _lrs("adamw", "poly", 1e-3, 7)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=7, power=0.9)
    expected = []
    for _ in range(7):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert values == pytest.approx(expected, rel=1e-9)
    assert values[3] == pytest.approx(1e-3 * (1 - 3 / 7) ** 0.9, rel=1e-9)


def test_poly_scheduler_resumes_exactly_from_its_state():
    optimizer, scheduler, values = _lrs("sgd", "poly", 0.12, 20, min_lr=1e-4, warmup=3, steps=8)
    state = scheduler.state_dict()
    _, _, full = _lrs("sgd", "poly", 0.12, 20, min_lr=1e-4, warmup=3, steps=12)
    model = torch.nn.Linear(2, 1)
    args = SimpleNamespace(
        optimizer="sgd", lr=0.12, momentum=0.9, weight_decay=0.0, lr_schedule="poly", min_lr=1e-4, warmup_steps=3
    )
    resumed_optimizer = build_optimizer(model.parameters(), args)
    resumed = build_scheduler(resumed_optimizer, args, 20)
    resumed.load_state_dict(state)
    resumed_optimizer.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    rest = []
    for _ in range(4):
        rest.append(resumed_optimizer.param_groups[0]["lr"])
        resumed_optimizer.step()
        resumed.step()
    assert values + rest == pytest.approx(full, rel=1e-12)


def test_optimizers_are_built_with_the_given_values():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, SimpleNamespace(optimizer="sgd", lr=0.03, momentum=0.8, weight_decay=4e-5))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.03, 0.8, 4e-5)
    adamw = build_optimizer(params, SimpleNamespace(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.0))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_skipped_first_step_leaves_the_optimizer_as_new(name):
    # fused optimizers skip a non-finite step on the device (engine/step_monitor.py); fused SGD's momentum buffers
    # would stay uninitialised after a skipped first step without the zero buffers build_optimizer gives them
    args = SimpleNamespace(optimizer=name, lr=0.1, momentum=0.9, weight_decay=1e-4)
    skipped, fresh = (torch.nn.Parameter(torch.arange(4.0)) for _ in range(2))
    optimizer, reference = build_optimizer([skipped], args), build_optimizer([fresh], args)
    assert supports_device_skip(optimizer) and all(group["fused"] for group in optimizer.param_groups)
    skipped.grad = torch.full((4,), float("nan"))
    assert not bool(skip_nonfinite_update(optimizer, None, torch.tensor(True)))
    assert torch.equal(skipped.detach(), torch.arange(4.0))
    for _ in range(2):
        for parameter, opt in ((skipped, optimizer), (fresh, reference)):
            parameter.grad = torch.tensor([1.0, -2.0, 0.5, 3.0])
            assert bool(skip_nonfinite_update(opt, None, torch.tensor(True)))
    plain = torch.nn.Parameter(torch.arange(4.0))  # the same two steps, unfused
    unfused = (
        torch.optim.SGD([plain], lr=0.1, momentum=0.9, weight_decay=1e-4)
        if name == "sgd"
        else torch.optim.AdamW([plain], lr=0.1, weight_decay=1e-4)
    )
    for _ in range(2):
        plain.grad = torch.tensor([1.0, -2.0, 0.5, 3.0])
        unfused.step()
    assert torch.allclose(skipped.detach(), fresh.detach()) and torch.allclose(skipped.detach(), plain.detach())


def _parse(*argv: str):
    return get_args_parser("test", "low").parse_args(list(argv))


def test_original_recipe_is_todays_defaults():
    args = _parse()
    resolve_recipe(args, world_size=1)
    assert (args.optimizer, args.lr, args.weight_decay, args.lr_schedule, args.aux_weight, args.augment) == (
        "adamw",
        1e-3,
        0.0,
        "constant",
        0.0,
        "original",
    )


def test_mmseg_recipe_scales_lr_with_the_total_batch_and_explicit_flags_win():
    args = _parse("--recipe", "mmseg", "--batch-size", "4")
    line = resolve_recipe(args, world_size=2)  # total batch 8: 0.12 * 8 / 32
    assert args.lr == pytest.approx(0.03) and "0.12 x total batch 8 / 32" in line
    assert (
        args.optimizer,
        args.momentum,
        args.weight_decay,
        args.lr_schedule,
        args.min_lr,
        args.aux_weight,
        args.augment,
    ) == ("sgd", 0.9, 4e-5, "poly", 1e-4, 0.4, "mmseg")
    args = _parse("--recipe", "mmseg", "--lr", "0.01", "--aux-weight", "0", "--augment", "original")
    line = resolve_recipe(args, world_size=1)
    assert (args.lr, args.aux_weight, args.augment, args.optimizer) == (0.01, 0.0, "original", "sgd")
    assert "given explicitly: lr 0.01, aux_weight 0.0, augment original" in line


def _ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean cross-entropy over non-void pixels with numpy, pixel by pixel."""
    x, t = logits.detach().double().numpy(), target.numpy()
    losses = []
    for n, h, w in zip(*np.nonzero(t != 255)):
        column = x[n, :, h, w]
        losses.append(math.log(np.exp(column - column.max()).sum()) + column.max() - column[t[n, h, w]])
    return sum(losses) / len(losses)


def test_auxiliary_loss_is_weight_times_each_heads_cross_entropy():
    torch.manual_seed(0)
    model = fast_scnn.Model(aux=True).train()
    images = torch.randn(2, 3, 64, 128)
    target = torch.randint(0, 19, (2, 64, 128))
    target[:, :8] = 255
    logits, aux_low, aux_context = model(images)
    assert aux_low.shape == aux_context.shape == logits.shape
    loss = auxiliary_loss((aux_low, aux_context), target, 0.4)
    assert loss.item() == pytest.approx(0.4 * (_ce(aux_low, target) + _ce(aux_context, target)), rel=1e-5)


def _stage(data_dir, experiment, *extra):
    return [
        "--data-dir",
        str(data_dir),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--experiment-id",
        experiment,
        *extra,
    ]


@pytest.mark.slow
def test_aux_heads_train_are_dropped_from_the_model_and_carried_to_the_next_stage(
    tiny_cityscapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, _stage(tiny_cityscapes, "aux-s1", "--aux-weight", "0.4"), monkeypatch) == 0
    out = capsys.readouterr().out
    assert "train_aux_loss" in out and "aux_weight 0.4" in out and "aux heads: random init" in out
    best = torch.load(tmp_path / "models" / "aux-s1.pth", weights_only=True)
    fast_scnn.Model().load_state_dict(best)  # strict: no auxiliary head in the best model
    state = torch.load(tmp_path / "checkpoints" / "aux-s1" / "state.pth", weights_only=True)
    assert any(k.startswith("aux_heads.") for k in state["model"])  # kept for resume
    heads = state["best_aux_heads"]
    assert heads and all(k.startswith("aux_heads.") for k in heads)

    # the next stage starts its heads from the previous stage's best epoch
    model = fast_scnn.Model(aux=True)
    line = init_aux_heads(model, "models/aux-s1.pth")
    assert line.startswith("aux heads: from checkpoints/aux-s1/state.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in heads.items())
    assert (
        run_in_process(
            train,
            _stage(
                tiny_cityscapes,
                "aux-s2",
                "--aux-weight",
                "0.4",
                "--profile",
                "medium",
                "--previous-model-path",
                "models/aux-s1.pth",
            ),
            monkeypatch,
        )
        == 0
    )
    assert "aux heads: from checkpoints/aux-s1/state.pth" in capsys.readouterr().out

    # a previous stage without heads leaves them fresh; the plain stage logs no aux loss
    assert run_in_process(train, _stage(tiny_cityscapes, "plain-s1"), monkeypatch) == 0
    assert "train_aux_loss" not in capsys.readouterr().out
    assert "random init" in init_aux_heads(fast_scnn.Model(aux=True), "models/plain-s1.pth")


@pytest.mark.slow
def test_resume_checks_the_resolved_recipe_values(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _stage(tiny_cityscapes, "mmseg-s1", "--recipe", "mmseg", "--epochs", "1")
    assert run_in_process(train, args, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "recipe mmseg: optimizer sgd, lr 0.0075 (= 0.12 x total batch 2 / 32)" in out
    state = torch.load(tmp_path / "checkpoints" / "mmseg-s1" / "state.pth", weights_only=True)
    assert (state["args"]["lr"], state["args"]["optimizer"], state["args"]["aux_weight"], state["args"]["augment"]) == (
        0.0075,
        "sgd",
        0.4,
        "mmseg",
    )
    # another recipe is refused, naming the resolved values that differ (the lr, given equal, is not among them)
    code = run_in_process(train, _stage(tiny_cityscapes, "mmseg-s1", "--epochs", "1", "--lr", "0.0075"), monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume with different arguments" in err
    assert "recipe: 'mmseg' -> 'original'" in err and "optimizer: 'sgd' -> 'adamw'" in err
    assert not re.search(r"\blr:", err)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])  # mmseg's photometric ops on the (CPU) device / in the workers
def test_mmseg_recipe_skips_a_nonfinite_first_step(tiny_cityscapes, tmp_path, monkeypatch, capsys, workers):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTSCNN_TEST_NAN_AT_STEP", "1")  # the fused SGD's very first step
    args = _stage(tiny_cityscapes, "mmseg-nan", "--recipe", "mmseg", "--skip-nonfinite", "--num-workers", workers)
    assert run_in_process(train, args, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "skipped 1 non-finite steps" in next(line for line in out.splitlines() if line.startswith("epoch 1/2"))
    state = torch.load(tmp_path / "checkpoints" / "mmseg-nan" / "state.pth", weights_only=True)
    assert state["args"]["augment"] == "mmseg" and state["args"]["optimizer"] == "sgd"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert buffers and all(torch.isfinite(b).all() for b in buffers)


@pytest.mark.slow
def test_distillation_with_cwd_logs_the_cwd_term(tiny_cityscapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_in_process(train, _stage(tiny_cityscapes, "teacher", "--epochs", "1"), monkeypatch) == 0
    argv = _stage(
        tiny_cityscapes,
        "student",
        "--epochs",
        "1",
        "--trained-teacher-model-path",
        "models/teacher.pth",
        "--kd-loss",
        "cwd",
    )
    assert run_in_process(train_distillation, argv, monkeypatch) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1")][-1]
    assert "train_cwd_loss" in line and "train_kd_loss" not in line
    state = torch.load(tmp_path / "checkpoints" / "student" / "state.pth", weights_only=True)
    assert state["args"]["kd_loss"] == "cwd"
