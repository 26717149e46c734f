"""Dice and distillation losses against explicit per-pixel loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses import channel_wise_distillation_loss, cross_entropy, dice_loss, distillation_loss

B, C, H, W = 2, 4, 5, 6
VOID = 255


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, C, H, W, generator=g) * 2
    teacher = torch.randn(B, C, H, W, generator=g) * 2
    target = torch.randint(0, C - 1, (B, H, W), generator=g)  # class C - 1 never occurs
    target[torch.rand(B, H, W, generator=g) < 0.25] = VOID
    return student, teacher, target


def _softmax(values) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _pixels(logits: torch.Tensor):
    """Yield (b, h, w, list of the C logits) for every pixel."""
    array = logits.detach().double().numpy()
    for b in range(array.shape[0]):
        for h in range(array.shape[2]):
            for w in range(array.shape[3]):
                yield b, h, w, array[b, :, h, w].tolist()


def _dice_reference(logits, target) -> float:
    intersection = [0.0] * C
    p_sum = [0.0] * C
    t_sum = [0.0] * C
    for b, h, w, values in _pixels(logits):
        label = int(target[b, h, w])
        if label == VOID:
            continue
        probs = _softmax(values)
        for c in range(C):
            p_sum[c] += probs[c]
            if c == label:
                intersection[c] += probs[c]
                t_sum[c] += 1
    scores = [(2 * intersection[c] + 1e-6) / (p_sum[c] + t_sum[c] + 1e-6) for c in range(C) if t_sum[c] > 0]
    return 1 - sum(scores) / len(scores)


def _ce_reference(logits, target) -> float:
    losses = []
    for b, h, w, values in _pixels(logits):
        label = int(target[b, h, w])
        if label != VOID:
            losses.append(-math.log(_softmax(values)[label]))
    return sum(losses) / len(losses)


def _kd_reference(student, teacher, temperature) -> float:
    teacher_pixels = list(_pixels(teacher))
    total, count = 0.0, 0
    for (_, _, _, s), (_, _, _, t) in zip(_pixels(student), teacher_pixels):
        q_s = _softmax([v / temperature for v in s])
        q_t = _softmax([v / temperature for v in t])
        total += sum(qt * math.log(qt / qs) for qt, qs in zip(q_t, q_s))
        count += 1
    return temperature**2 * total / count


def test_dice_matches_loop_reference():
    logits, _, target = _inputs()
    assert (target == C - 1).sum() == 0 and (target == VOID).any()
    loss = dice_loss(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_dice_reference(logits, target), rel=1e-5)


def test_dice_of_a_confident_correct_prediction_is_zero():
    _, _, target = _inputs(1)
    logits = F.one_hot(torch.where(target == VOID, 0, target), C).permute(0, 3, 1, 2).float() * 50
    logits[:, 0][target == VOID] = 0.0  # the void pixels' logits do not matter
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_without_valid_pixel_is_zero_and_backward_works():
    logits = torch.randn(B, C, H, W, requires_grad=True)
    target = torch.full((B, H, W), VOID)
    loss = dice_loss(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_dice_gradient_flows():
    logits, _, target = _inputs(2)
    logits.requires_grad_(True)
    dice_loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cross_entropy_matches_loop_reference():
    logits, _, target = _inputs(3)
    loss = cross_entropy(logits.half(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_ce_reference(logits.half().float(), target), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_matches_loop_reference(temperature):
    student, teacher, target = _inputs(4)
    total, ce, kd = distillation_loss(student, teacher, target, temperature=temperature, alpha=0.3)
    assert kd.item() == pytest.approx(_kd_reference(student, teacher, temperature), rel=1e-5)
    assert ce.item() == pytest.approx(_ce_reference(student, target), rel=1e-5)
    assert total.item() == pytest.approx(0.3 * kd.item() + 0.7 * ce.item(), rel=1e-6)


def test_alpha_zero_is_ce_and_alpha_one_is_kd():
    student, teacher, target = _inputs(5)
    total, ce, _ = distillation_loss(student, teacher, target, temperature=2.0, alpha=0.0)
    assert total.item() == ce.item()
    total, _, kd = distillation_loss(student, teacher, target, temperature=2.0, alpha=1.0)
    assert total.item() == kd.item()


def test_kd_does_not_depend_on_resolution():
    student, teacher, target = _inputs(6)

    def up(x):
        return x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)

    _, ce, kd = distillation_loss(student, teacher, target, temperature=4.0, alpha=0.5)
    _, ce_up, kd_up = distillation_loss(up(student), up(teacher), up(target), temperature=4.0, alpha=0.5)
    assert up(target).shape == (B, 2 * H, 2 * W)
    assert kd_up.item() == pytest.approx(kd.item(), rel=1e-6)
    assert ce_up.item() == pytest.approx(ce.item(), rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    student, _, target = _inputs(7)
    _, _, kd = distillation_loss(student, student.clone(), target, temperature=3.0, alpha=0.5)
    assert abs(kd.item()) < 1e-6


def test_gradients_do_not_reach_the_teacher():
    student, teacher, target = _inputs(8)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    total, _, _ = distillation_loss(student, teacher, target, temperature=4.0, alpha=0.5)
    total.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_teacher_of_another_size_is_resized_bilinearly():
    student, _, target = _inputs(9)
    small_teacher = torch.randn(B, C, 3, 4)
    _, _, kd = distillation_loss(student, small_teacher, target, temperature=2.0, alpha=0.5)
    resized = F.interpolate(small_teacher, size=(H, W), mode="bilinear", align_corners=False)
    assert kd.item() == pytest.approx(_kd_reference(student, resized, 2.0), rel=1e-5)


def test_kd_and_ce_are_on_the_same_scale():
    g = torch.Generator().manual_seed(10)
    student = torch.randn(2, 19, 32, 64, generator=g)
    teacher = torch.randn(2, 19, 32, 64, generator=g)
    target = torch.randint(0, 19, (2, 32, 64), generator=g)
    _, ce, kd = distillation_loss(student, teacher, target, temperature=4.0, alpha=0.5)
    assert 0.01 < kd.item() / ce.item() < 100
    assert np.isfinite([kd.item(), ce.item()]).all()


def _cwd_reference(student, teacher, temperature) -> float:
    """Explicit loops: for each image n and class c, the softmax over the H*W positions of the channel / T."""
    s, t = student.detach().double().numpy(), teacher.detach().double().numpy()
    per_channel = []
    for n in range(s.shape[0]):
        for c in range(s.shape[1]):
            p = _softmax([v / temperature for v in t[n, c].ravel().tolist()])
            q = _softmax([v / temperature for v in s[n, c].ravel().tolist()])
            per_channel.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))
    return temperature**2 * sum(per_channel) / len(per_channel)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cwd_matches_loop_reference(temperature):
    student, teacher, _ = _inputs(11)
    loss = channel_wise_distillation_loss(student, teacher, temperature)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_cwd_reference(student, teacher, temperature), rel=1e-5)
    # a distribution over positions, not over classes: the per-pixel KL is another number
    assert loss.item() != pytest.approx(_kd_reference(student, teacher, temperature), rel=1e-2)


def test_cwd_teacher_of_another_size_is_resized_bilinearly_first():
    student, _, _ = _inputs(12)
    small_teacher = torch.randn(B, C, 3, 4, generator=torch.Generator().manual_seed(12))
    resized = F.interpolate(small_teacher, size=(H, W), mode="bilinear", align_corners=False)
    loss = channel_wise_distillation_loss(student, small_teacher, 4.0)
    assert loss.item() == pytest.approx(_cwd_reference(student, resized, 4.0), rel=1e-5)


def test_cwd_in_distillation_loss_total_and_gradients():
    student, teacher, target = _inputs(13)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    total, ce, kd = distillation_loss(student, teacher, target, temperature=4.0, alpha=0.3, kd_loss="cwd")
    assert kd.item() == pytest.approx(_cwd_reference(student, teacher, 4.0), rel=1e-5)
    assert ce.item() == pytest.approx(_ce_reference(student, target), rel=1e-5)
    assert total.item() == pytest.approx(0.3 * kd.item() + 0.7 * ce.item(), rel=1e-6)
    total.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    _, _, kd_same = distillation_loss(student, student.detach().clone(), target, 4.0, 0.5, kd_loss="cwd")
    assert abs(kd_same.item()) < 1e-6


def test_each_script_s_loss_is_a_module_of_the_contract_functions(tmp_path):
    """make_loss(args, device) of the four scripts: an nn.Module whose forward(logits, images, target) gives
    (total, {name: value}) from the contract functions; a distillation loss owns its teacher."""
    import argparse

    import fast_scnn
    import train
    import train_dice
    import train_distillation
    import train_distillation_dice
    from training.losses import DistillationLoss

    torch.manual_seed(0)
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "teacher.pth")
    args = argparse.Namespace(
        teacher_arch="fast_scnn",
        trained_teacher_model_path=str(tmp_path / "teacher.pth"),
        temperature=2.0,
        alpha=0.3,
        kd_loss="kl",
        dice_loss_weight=0.7,
    )
    images, logits = torch.randn(2, 3, 64, 128), torch.randn(2, 19, 64, 128)
    target = torch.randint(0, 19, (2, 64, 128))
    target[:, :4] = VOID
    ce, dice = cross_entropy(logits, target), dice_loss(logits, target)
    losses = {m.__name__: m.make_loss(args, torch.device("cpu")) for m in (train, train_dice, train_distillation)}
    losses["train_distillation_dice"] = train_distillation_dice.make_loss(args, torch.device("cpu"))
    assert all(isinstance(loss, torch.nn.Module) for loss in losses.values())
    assert [isinstance(loss, DistillationLoss) for loss in losses.values()] == [False, False, True, True]

    total, parts = losses["train"](logits, images, target)
    assert torch.equal(total, ce) and list(parts) == ["train_loss"]
    total, parts = losses["train_dice"](logits, images, target)
    assert torch.allclose(total, ce + 0.7 * dice) and list(parts) == ["train_ce_loss", "train_dice_loss", "train_loss"]

    teacher_logits = losses["train_distillation"].teacher(images)
    kd_total, kd_ce, kd = distillation_loss(logits, teacher_logits, target, 2.0, 0.3)
    total, parts = losses["train_distillation"](logits, images, target)
    assert torch.allclose(total, kd_total) and torch.allclose(parts["train_kd_loss"], kd)
    assert list(parts) == ["train_total_loss", "train_ce_loss", "train_kd_loss"]
    total, parts = losses["train_distillation_dice"](logits, images, target)
    assert torch.allclose(total, kd_total + 0.7 * dice) and torch.allclose(parts["train_ce_loss"], kd_ce)
    assert list(parts) == ["train_total_loss", "train_ce_loss", "train_kd_loss", "train_dice_loss"]
