"""Distributed training (issue 6): rank detection, and 2-process gloo stages on the CPU under torchrun.

The stages run the real scripts under `python -m torch.distributed.run --nproc_per_node=2` with the small profile
table of tests/small_profile.py. The demo set here has 3 validation images, so that 2 processes get 2 and 1 of them:
exact validation must count each image once (no sampler padding) and give the same confusion matrix as one process.
"""

from __future__ import annotations

import csv
import datetime
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, stage_args
from small_profile import SMALL_PROFILES

import fast_scnn
from training.data.dataset import IGNORE_INDEX, NUM_CLASSES, CityscapesSegmentation, to_model_input, val_transform
from training.metrics import ConfusionMatrix
from training.profiles import resolve_profile
from training.runtime import distributed

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------------------------------------ detection (unit)
def test_detect_single_process_without_launcher():
    assert distributed.detect({}) == distributed.DistributedEnv(0, 0, 1)
    assert not distributed.detect({}).enabled and distributed.detect({}).is_main


def test_detect_from_torchrun_variables():
    env = distributed.detect({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"})
    assert env == distributed.DistributedEnv(rank=5, local_rank=1, world_size=8)
    assert env.enabled and not env.is_main


def test_detect_from_slurm_step_variables():
    slurm = {
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NODELIST": "gpu[007-008]",
    }
    assert distributed.detect(slurm) == distributed.DistributedEnv(rank=6, local_rank=2, world_size=8)
    # torchrun inside a Slurm job wins: its variables describe the processes it started
    assert distributed.detect({**slurm, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}).world_size == 2
    # a batch script (no srun step) or a single task is not distributed
    assert not distributed.detect({k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}).enabled
    assert not distributed.detect({**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).enabled


def test_first_host_of_a_slurm_node_list(monkeypatch):
    assert distributed.first_host("gpu[007-009,012],cpu1") == "gpu007"
    assert distributed.first_host("node12") == "node12"
    monkeypatch.setenv("PATH", "")  # no scontrol (inside a container): the parser
    for nodelist, first in [
        ("n[1-2]-ib", "n1-ib"),
        ("rack[07-08]-n[3,1]", "rack07-n3"),
        ("gpu[007-009,012],cpu1", "gpu007"),
        ("node12,node3", "node12"),
        ("a[5],b[1-2]", "a5"),
    ]:
        assert distributed.first_host(nodelist) == first, nodelist


def test_init_binds_one_visible_gpu_and_bounds_the_collectives(monkeypatch):
    """Per-task GPU binding gives each task one visible GPU: local rank 3 must use cuda:0, not cuda:3."""
    calls = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", torch.device(device)))
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend, **kwargs: calls.setdefault("init", (backend, kwargs))
    )
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FASTSCNN_COLLECTIVE_TIMEOUT_S"):
        monkeypatch.setenv(name, "")  # recorded first, so that what init() sets is removed again after the test
        monkeypatch.delenv(name)
    # an srun task of a 2-node job whose batch shell exported MASTER_ADDR
    for name, value in {
        "SLURM_PROCID": "7",
        "SLURM_LOCALID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "n[1-2]-ib",
        "MASTER_ADDR": "n1-ib",
    }.items():
        monkeypatch.setenv(name, value)
    env = distributed.init("cuda")
    assert (env.rank, env.local_rank, env.world_size) == (7, 3, 8)
    assert calls["set_device"] == torch.device("cuda", 0)
    backend, kwargs = calls["init"]
    assert backend == "nccl" and kwargs["rank"] == 7 and kwargs["world_size"] == 8
    assert kwargs["timeout"] == datetime.timedelta(seconds=300)  # not NCCL's default
    assert os.environ["MASTER_ADDR"] == "n1-ib" and os.environ["MASTER_PORT"] == str(29500 + 123456 % 10000)
    assert distributed.cuda_device(5) == torch.device("cuda", 0)


# ------------------------------------------------------------------------------------------------ 2-process stages
@pytest.fixture(scope="module")
def odd_val_cityscapes(tmp_path_factory):
    from demo.dataset import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("odd_val"), num_train=4, num_val=3, size=(256, 128), seed=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_stage(script: str, *args: str, cwd, processes: int = 2) -> subprocess.CompletedProcess:
    """`script` with the small profiles (tests/small_profile.py), one thread per process: under torchrun with
    `processes` processes, or as one plain process."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1"]
        launcher += [f"--master_port={free_port()}"]
    command = [*launcher, str(REPO / "tests" / "small_profile.py"), script, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def durations(work) -> list[dict]:
    with open(work / "measurements" / "durations.csv", newline="") as file:
        return list(csv.DictReader(file))


def evaluate_one_process(model_path, data_dir) -> ConfusionMatrix:
    """The validation of one process, written independently of the stage loop: image by image, one thread."""
    model = fast_scnn.Model()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    dataset = CityscapesSegmentation(data_dir, "val", val_transform(resolve_profile("low", SMALL_PROFILES)))
    matrix = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:
        with torch.no_grad():
            for index in range(len(dataset)):
                image, target = dataset[index]
                matrix.update(model(to_model_input(image.unsqueeze(0), "cpu")).argmax(1)[0], target)
    finally:
        torch.set_num_threads(threads)
    return matrix, dataset


def calibrated_model(data_dir, path) -> None:
    """A random Fast-SCNN whose BatchNorm statistics are those of the training images, saved to `path`.

    A stage from random weights predicts one class everywhere in eval mode, which would hide differences between
    the processes' BatchNorm statistics; from these weights the predictions vary from pixel to pixel.
    """
    torch.manual_seed(0)
    model = fast_scnn.Model()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # cumulative average
    dataset = CityscapesSegmentation(data_dir, "train", val_transform(resolve_profile("low", SMALL_PROFILES)))
    with torch.no_grad():
        model.train()(to_model_input(torch.stack([dataset[i][0] for i in range(len(dataset))]), "cpu"))
    torch.save(model.state_dict(), path)


@pytest.mark.slow
def test_two_process_stage_writes_once_and_validates_exactly(odd_val_cityscapes, tmp_path):
    (tmp_path / "models").mkdir()
    calibrated_model(odd_val_cityscapes, tmp_path / "models" / "init.pth")
    argv = stage_args(odd_val_cityscapes, 1, "--previous-model-path", "models/init.pth", experiment="ddp")
    result = run_stage("train.py", *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device cpu x 2" in result.stdout and result.stdout.count("epoch 1/1 |") == 1  # rank 0 prints

    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["ddp.json", "ddp.pth", "init.pth"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "ddp").iterdir()) == [
        "history.csv",
        "preview-epoch-001.png",
        "state.pth",
    ]
    rows = durations(tmp_path)
    assert len(rows) == 1 and rows[0]["processes"] == "2" and rows[0]["experiment_id"] == "ddp"

    state = torch.load(tmp_path / "checkpoints" / "ddp" / "state.pth", weights_only=True)
    matrix, dataset = evaluate_one_process(tmp_path / "models" / "ddp.pth", odd_val_cityscapes)
    # every validation pixel counted exactly once over the 2 processes
    valid_pixels = sum(int((dataset[i][1] != IGNORE_INDEX).sum()) for i in range(len(dataset)))
    assert int(state["best_confusion_matrix"].sum()) == valid_pixels == int(matrix.matrix.sum())
    assert len(matrix.matrix.sum(0).nonzero()) > 3  # predictions of several classes: a sensitive comparison
    assert torch.equal(state["best_confusion_matrix"], matrix.matrix)
    assert state["best_miou"] == matrix.compute()["miou"]


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(odd_val_cityscapes, tmp_path):
    """2 -> 1 processes: the schedule and the shard position are counted in steps of the saved run's size."""
    result = run_stage("train.py", *stage_args(odd_val_cityscapes, 1, experiment="ddp-resume"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    state = torch.load(tmp_path / "checkpoints" / "ddp-resume" / "state.pth", weights_only=True)
    assert (state["world_size"], state["steps_per_epoch"]) == (2, 1)
    argv = stage_args(odd_val_cityscapes, 2, experiment="ddp-resume")
    result = run_stage("train.py", *argv, cwd=tmp_path, processes=1)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "saved by 2 process(es) with 1 steps per epoch, but this run has 1 process(es) with 2" in result.stderr
    assert "epoch 2/2" not in result.stdout


@pytest.mark.slow
def test_two_process_distillation_stage(odd_val_cityscapes, tmp_path):
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "models" / "teacher.pth")
    argv = stage_args(
        odd_val_cityscapes, 1, "--trained-teacher-model-path", "models/teacher.pth", experiment="ddp-student"
    )
    result = run_stage("train_distillation.py", *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device cpu x 2" in result.stdout and "train_kd_loss" in result.stdout
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "ddp-student.json",
        "ddp-student.pth",
        "teacher.pth",
    ]
    fast_scnn.Model().load_state_dict(torch.load(tmp_path / "models" / "ddp-student.pth", weights_only=True))
    rows = durations(tmp_path)
    assert len(rows) == 1 and rows[0]["processes"] == "2" and rows[0]["script"] == "train_distillation.py"
