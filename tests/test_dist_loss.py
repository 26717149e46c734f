"""DIST (training.losses.dist_loss) against an explicit computation over pixels and classes in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import KD_LOSSES, dist_loss, distillation_loss

B, C, H, W = 2, 4, 3, 5
VOID = 255


def _inputs(seed: int = 0, void_fraction: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, C, H, W, generator=g) * 2
    teacher = torch.randn(B, C, H, W, generator=g) * 3
    target = torch.randint(0, C, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < void_fraction] = VOID
    return student, teacher, target


def _softmax(values: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in values]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    return [e / sum(exps) for e in exps]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return cov / (sx * sy)


def _reference(student, teacher, target, temperature, beta, gamma) -> float:
    """Rows: the non-void pixels (all pixels without a target); q = softmax(logits / T) over the classes."""
    rows_s, rows_t = [], []
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if target is not None and int(target[b, h, w]) == VOID:
                    continue
                rows_s.append(_softmax(student[b, :, h, w].double().tolist(), temperature))
                rows_t.append(_softmax(teacher[b, :, h, w].double().tolist(), temperature))
    inter = sum(1 - _pearson(s, t) for s, t in zip(rows_s, rows_t)) / len(rows_s)
    columns = range(C)
    intra = sum(1 - _pearson([r[c] for r in rows_s], [r[c] for r in rows_t]) for c in columns) / C
    return temperature**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(
    "temperature, beta, gamma, with_target",
    [
        (1.0, 1.0, 1.0, True),
        (4.0, 1.0, 1.0, True),
        (1.0, 2.0, 0.5, True),
        (0.5, 1.0, 3.0, False),
        (2.0, 0.0, 1.0, True),
    ],
)
def test_dist_loss_matches_an_explicit_computation(temperature, beta, gamma, with_target):
    student, teacher, target = _inputs()
    expected = _reference(student, teacher, target if with_target else None, temperature, beta, gamma)
    got = dist_loss(student, teacher, temperature, beta, gamma, target=target if with_target else None)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_void_pixels_do_not_count():
    student, teacher, target = _inputs(seed=1)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    void = (target == VOID).unsqueeze(1).expand_as(student)
    changed_student[void] = 50.0 * torch.randn(int(void.sum()))
    changed_teacher[void] = -50.0
    assert dist_loss(changed_student, changed_teacher, target=target).item() == pytest.approx(
        dist_loss(student, teacher, target=target).item(), rel=1e-6
    )
    # ... but they do count without a target
    assert dist_loss(changed_student, changed_teacher).item() != pytest.approx(dist_loss(student, teacher).item())


def test_a_student_equal_to_the_teacher_has_no_loss_and_a_different_one_has():
    student, teacher, target = _inputs(seed=2)
    assert dist_loss(teacher, teacher, 1.0, target=target).item() == pytest.approx(0.0, abs=1e-6)
    assert dist_loss(student, teacher, 1.0, target=target).item() > 0.1


def test_all_void_gives_zero_with_a_graph_and_no_nan():
    student, teacher, target = _inputs(seed=3)
    student.requires_grad_(True)
    loss = dist_loss(student, teacher, target=torch.full_like(target, VOID))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_gradient_reaches_the_student_only():
    student, teacher, target = _inputs(seed=4)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    dist_loss(student, teacher, 2.0, target=target).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_teacher_of_another_size_is_resized_bilinearly():
    student, teacher, target = _inputs(seed=5)
    big = torch.nn.functional.interpolate(teacher, scale_factor=2, mode="bilinear", align_corners=False)
    resized = torch.nn.functional.interpolate(big, size=(H, W), mode="bilinear", align_corners=False)
    assert dist_loss(student, big, target=target).item() == pytest.approx(
        dist_loss(student, resized, target=target).item(), rel=1e-6
    )


def test_distillation_loss_combines_dist_with_cross_entropy():
    student, teacher, target = _inputs(seed=6)
    assert "dist" in KD_LOSSES
    total, ce, kd = distillation_loss(student, teacher, target, temperature=1.0, alpha=0.25, kd_loss="dist")
    assert kd.item() == pytest.approx(_reference(student, teacher, target, 1.0, 1.0, 1.0), rel=1e-5)
    assert total.item() == pytest.approx(0.25 * kd.item() + 0.75 * ce.item(), rel=1e-6)
