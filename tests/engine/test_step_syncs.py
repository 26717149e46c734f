"""Host syncs of the training step (issue 14): every read of a device value on the host during the training epochs
is counted by patching the Tensor methods that make the CPU wait for the device, and the budget is asserted.

On the CPU these calls cost nothing, but each one would drain the GPU's queue: counting them here is what keeps a
GPU run asynchronous. Calls made by the data loader (sampler and dataset, host tensors on the way in) are not
step syncs and are left out.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from small_profile import run_in_process

import train
from demo.dataset import make_demo_dataset
from training.engine import loop

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SYNC_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero", "cpu")
STEPS = 20  # steps per epoch: 40 images, batch 2
CHECK_EVERY = 10


@pytest.fixture(scope="module")
def forty_images(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("forty"), num_train=2 * STEPS, num_val=2, size=(256, 128), seed=1)


def _in_loader(frame) -> bool:
    while frame is not None:
        if "torch/utils/data/" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


def count_syncs(monkeypatch, data_dir, *extra: str) -> tuple[list[int], int]:
    """Run a 2-epoch stage; return the host syncs counted in each training epoch and the exit code."""
    counting, per_epoch = [False], []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counted(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            if counting[0] and not _in_loader(sys._getframe(1)):
                per_epoch[-1] += 1
            return original(self, *args, **kwargs)

        return method

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    train_epoch = loop.train_epoch

    def counted_epoch(*args, **kwargs):
        per_epoch.append(0)
        counting[0] = True
        try:
            return train_epoch(*args, **kwargs)
        finally:
            counting[0] = False

    monkeypatch.setattr(loop, "train_epoch", counted_epoch)
    code = run_in_process(
        train,
        ["--data-dir", str(data_dir), "--epochs", "2", "--batch-size", "2", "--num-workers", "0", *extra],
        monkeypatch,
    )
    return per_epoch, code


@pytest.mark.parametrize("extra", [(), ("--grad-clip", "1.0", "--skip-nonfinite")], ids=["plain", "clip-skip"])
def test_training_step_reads_the_device_at_most_once_per_check(forty_images, tmp_path, monkeypatch, capsys, extra):
    monkeypatch.chdir(tmp_path)
    per_epoch, code = count_syncs(monkeypatch, forty_images, *extra)
    assert code == 0, capsys.readouterr().err
    assert len(per_epoch) == 2
    # one read per check (every CHECK_EVERY steps and at the epoch's end) and one for the epoch's sums
    budget = math.ceil(STEPS / CHECK_EVERY) + 1
    print(f"host syncs per epoch of {STEPS} steps: {per_epoch} ({per_epoch[0] / STEPS:.2f} per step; budget {budget})")
    assert all(count <= budget for count in per_epoch), per_epoch
    assert loop.CHECK_EVERY <= 20
