"""ConfusionMatrix against hand computations and an independent loop-based reference."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.metrics import ConfusionMatrix, format_iou_table

# 8 pixels, one void; the (gt, pred) pairs counted are
# (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2)
TARGET = torch.tensor([[0, 0, 0, 1], [1, 2, 2, 255]])
PRED = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])


def test_hand_computed_example():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    result = cm.compute()
    # IoU = TP / (GT + PRED - TP): class 0: 2/(3+2-2), class 1: 1/(2+2-1), class 2: 2/(2+3-2)
    assert result["iou"] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert result["miou"] == pytest.approx(5 / 9)
    # Dice = 2TP / (GT + PRED): 4/5, 2/4, 4/5
    assert result["dice"] == pytest.approx([4 / 5, 1 / 2, 4 / 5])
    assert result["mean_dice"] == pytest.approx(0.7)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)
    assert all(type(v) is float for v in result["iou"] + result["dice"])
    assert all(type(result[k]) is float for k in ("miou", "mean_dice", "pixel_accuracy"))


def test_void_and_out_of_range_targets_are_skipped():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(torch.tensor([0, 1, 2, 1]), torch.tensor([255, 255, 7, 1]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([0, 1]), torch.tensor([-1, 0]))
    assert cm.matrix.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_absent_class_is_nan_and_left_out_of_the_means():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    result = cm.compute()
    assert math.isnan(result["iou"][3]) and math.isnan(result["dice"][3])
    assert result["iou"][:3] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert result["miou"] == pytest.approx(5 / 9)
    assert result["mean_dice"] == pytest.approx(0.7)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)


def test_empty_matrix_gives_nan():
    result = ConfusionMatrix(2).compute()
    assert all(math.isnan(v) for v in result["iou"] + result["dice"])
    assert math.isnan(result["miou"]) and math.isnan(result["mean_dice"]) and math.isnan(result["pixel_accuracy"])


def test_two_updates_equal_one_update_of_the_concatenation():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 5, (2, 7, 9), generator=g) for _ in range(2)]
    targets = [torch.randint(0, 5, (2, 7, 9), generator=g) for _ in range(2)]
    targets[1][0, :3] = 255
    split, joined = ConfusionMatrix(5), ConfusionMatrix(5)
    for p, t in zip(preds, targets):
        split.update(p, t)
    joined.update(torch.cat(preds), torch.cat(targets))
    assert torch.equal(split.matrix, joined.matrix)
    assert split.compute() == joined.compute()


def test_reset():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    cm.reset()
    assert cm.matrix.tolist() == [[0] * 3] * 3
    cm.update(PRED, TARGET)
    assert cm.matrix.sum().item() == 7


def _reference(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t != ignore_index:
            matrix[t][p] += 1
    iou, dice = [], []
    for c in range(num_classes):
        tp = matrix[c][c]
        fn = sum(matrix[c][k] for k in range(num_classes)) - tp
        fp = sum(matrix[k][c] for k in range(num_classes)) - tp
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"))
    correct = sum(matrix[c][c] for c in range(num_classes))
    return matrix, iou, dice, correct / matrix.sum()


def test_random_against_loop_reference():
    rng = np.random.default_rng(1)
    num_classes = 6
    target = rng.integers(0, num_classes, size=(3, 11, 13))
    target[rng.random(target.shape) < 0.2] = 255
    target[target == 4] = 5  # class 4 has no ground truth ...
    pred = rng.integers(0, num_classes, size=target.shape)
    pred[pred == 4] = 0  # ... and no prediction
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    matrix, iou, dice, accuracy = _reference(pred, target, num_classes, 255)
    result = cm.compute()
    assert cm.matrix.numpy().tolist() == matrix.tolist()
    np.testing.assert_allclose(result["iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(result["dice"], dice, rtol=1e-12)
    assert math.isnan(result["iou"][4])
    assert result["miou"] == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert result["mean_dice"] == pytest.approx(np.nanmean(dice), rel=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)


def test_all_reduce_without_process_group_is_a_noop():
    assert not dist.is_initialized()
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def test_format_iou_table():
    table = format_iou_table([2 / 3, float("nan"), 0.5], ["road", "sidewalk", "sky"])
    lines = table.splitlines()
    assert len(lines) == 4
    assert "road" in lines[1] and "66.67" in lines[1]
    assert "sidewalk" in lines[2] and "n/a" in lines[2]
    assert "sky" in lines[3] and "50.00" in lines[3]


def _rank_data(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, 4, (2, 5, 5), generator=g), torch.randint(0, 4, (2, 5, 5), generator=g)


def _all_reduce_worker(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(4)
        cm.update(*_rank_data(rank))
        cm.all_reduce()
        expected = ConfusionMatrix(4)
        for r in range(world_size):
            expected.update(*_rank_data(r))
        assert torch.equal(cm.matrix, expected.matrix), (cm.matrix, expected.matrix)
        assert cm.matrix.sum().item() == world_size * 50
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_all_reduce_sums_over_two_gloo_processes():
    mp.spawn(_all_reduce_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_matrix_lives_on_the_given_device_before_any_update():
    """A process without validation images all-reduces the matrix it was created with: it must be on the device
    (NCCL cannot reduce a CPU tensor)."""
    matrix = ConfusionMatrix(19, device=torch.device("meta"))
    assert matrix.matrix.device.type == "meta" and matrix.matrix.shape == (19, 19)
    matrix.reset()
    assert matrix.matrix.device.type == "meta"
    assert ConfusionMatrix(3).matrix.device.type == "cpu"
