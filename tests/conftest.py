"""Shared fixtures: the repository root on sys.path, tiny demo data sets, and a runner for the scripts."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("WANDB_MODE", "disabled")  # tests never talk to W&B unless they ask for it


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: integration tests that train or start services (CI runs them)")
    config.addinivalue_line("markers", "slurm: tests against a real Slurm cluster started on loopback (needs root)")
    # torchvision 0.29 deprecates its PNG decoder in favour of TorchCodec; it is still the fastest here
    # (training/data/images.py)
    config.addinivalue_line("filterwarnings", "ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def one_thread():
    """One compute thread in this process and in the scripts it starts (OMP_NUM_THREADS); opt in per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`.

    Tiny stages gain nothing from a second thread, and on a machine shared with other jobs OpenMP threads waiting
    for each other slow a forward pass down by orders of magnitude (2 s instead of 10 ms measured here). The same
    number everywhere also keeps the in-process and subprocess runs of a stage numerically identical.
    """
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_cityscapes(tmp_path_factory) -> Path:
    """A tiny demo data set in the Cityscapes layout: 4 train and 2 val images of 256x128 (read-only for tests)."""
    from demo.dataset import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("tiny_cityscapes"), num_train=4, num_val=2, size=(256, 128), seed=0
    )


def run_script(
    script: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts with the test's Python in `cwd` (where models/, checkpoints/ go)."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(main, argv: list[str]) -> tuple[int, str, str]:
    """An entry point's `main` as its command line runs it (through run_cli), in this process: (exit code, stdout,
    stderr). Cheaper than run_script by a Python start that imports torch; a test of what only a process shows (no
    traceback, the `__main__` block) uses run_script."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = exit_code(main, argv)
    return code, out.getvalue(), err.getvalue()


def exit_code(main, argv: list[str]) -> int:
    """Run an entry point's `main` through run_cli, as its command line does, in this process; its exit code."""
    from training.errors import run_cli

    try:
        run_cli(main, list(argv))
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0


def stage_args(data_dir, epochs: int = 3, *extra: str, experiment: str = "experiment-01") -> list[str]:
    """A small stage's command line: the data, `epochs`, batch 2, no loader workers, the experiment id, then `extra`.

    A test file fixes its own id once: `stage_args = functools.partial(conftest.stage_args, experiment=ID)`.
    """
    return [
        "--data-dir",
        str(data_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--experiment-id",
        experiment,
        *extra,
    ]


def trained_looking_model(seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics far from (0, 1): folding them wrongly would show in the logits."""
    import torch

    import fast_scnn

    torch.manual_seed(seed)
    model = fast_scnn.Model()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
