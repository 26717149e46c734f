"""Helper processes and the stage's stop signals (issue 12): no hang, by construction.

The stage installs its SIGTERM/SIGUSR1 handler (StopRequest) before it builds the cache, so the cache's pool is
forked with it. These tests run the real pool in a subprocess with a timeout (a hang fails the test instead of
hanging it): with the stage's handler installed, a build whose workers are still busy when it ends (here: an
error in one image while the others are still being read), and a SIGTERM sent to the whole process group during a
build, as Slurm sends it. Then a stage that builds its cache in its set-up, ten times in a row (in one process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, stage_args
from small_profile import SMALL_PROFILES

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PREAMBLE = """
import os, signal, sys, threading, time
sys.path.insert(0, {repo!r})
import training.data.cache as cache
from training.profiles import Profile
from training.runtime.signals import StopRequest

root = {root!r}
from torchvision.datasets import Cityscapes
files = Cityscapes(root, split="train", mode="fine", target_type="semantic")
images, labels = list(files.images), [t[0] for t in files.targets]
profile = Profile("low", 1, (128, 64), (96, 48))
stop = StopRequest()  # as run_stage does before the stage builds its cache
original = cache._cache_one
"""

BUSY_AT_THE_END = (
    PREAMBLE
    + """
def slow_or_failing(task):
    if task[0] == 0:
        time.sleep(0.5)
        raise RuntimeError("image 0 is corrupt")
    time.sleep(3)  # the other worker is busy when the error ends the build
    return original(task)

cache._cache_one = slow_or_failing
try:
    cache.prepare_cache(root, "train", images, labels, profile, mode="always", cache_dir={cache_dir!r}, workers=2)
except RuntimeError as error:
    print("raised:", error, flush=True)
    sys.exit(7)
print("no error", flush=True)
"""
)

TERM_TO_THE_GROUP = (
    PREAMBLE
    + """
def slow(task):
    time.sleep(1)
    return original(task)

cache._cache_one = slow
# Slurm signals every process of the job: the group, pool workers included, in the middle of the build
threading.Timer(0.5, lambda: os.killpg(os.getpgid(0), signal.SIGTERM)).start()
cached = cache.prepare_cache(root, "train", images, labels, profile, mode="always", cache_dir={cache_dir!r},
                             workers=2)
print("built", cached.count, "stop", stop.signum, flush=True)
"""
)


def run_bounded(command: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run `command` in its own process group; past `timeout` kill the whole group (helpers too) and fail."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"hung for {timeout:.0f} s (killed):\n{out}\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def run_script(code: str, tmp_path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return run_bounded([sys.executable, "-c", textwrap.dedent(code)], tmp_path, env, timeout)


def test_a_pool_with_busy_workers_at_its_end_does_not_hang(tiny_cityscapes, tmp_path):
    code = BUSY_AT_THE_END.format(repo=str(REPO), root=str(tiny_cityscapes), cache_dir=str(tmp_path / "cache"))
    result = run_script(code, tmp_path)
    assert result.returncode == 7, result.stdout + result.stderr
    assert "raised: image 0 is corrupt" in result.stdout
    assert "SIGTERM" not in result.stderr  # no worker was signalled
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # the failed build left no temporary file


def test_sigterm_to_the_group_during_a_build_reaches_only_the_stage(tiny_cityscapes, tmp_path):
    code = TERM_TO_THE_GROUP.format(repo=str(REPO), root=str(tiny_cityscapes), cache_dir=str(tmp_path / "cache"))
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # the build finished, and the stage (only the stage: not each worker) took the signal, to stop at its first step
    assert f"built 4 stop {int(signal.SIGTERM)}" in result.stdout
    assert result.stderr.count("SIGTERM received") == 1, result.stderr


def test_helpers_start_with_the_stop_signals_ignored(tmp_path):
    code = f"""
    import signal, sys
    sys.path.insert(0, {str(REPO)!r})
    from training.data.workers import map_in_helpers
    from training.runtime.signals import StopRequest

    def disposition(_):
        return [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)], \\
            sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    stop = StopRequest()
    results = []
    map_in_helpers(disposition, range(4), 2, results.append)
    print(results[0], sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    """
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "([True, True, True], []) []"  # ignored in the workers; nothing left blocked


@pytest.fixture(scope="module")
def twice_profile_size(tmp_path_factory):
    """4 train / 2 val images at twice the small profile's image size: the stage caches them in its set-up."""
    from demo.dataset import make_demo_dataset

    width, height = SMALL_PROFILES["low"][0]
    return make_demo_dataset(
        tmp_path_factory.mktemp("twice"), num_train=4, num_val=2, size=(2 * width, 2 * height), seed=3
    )


# ten stages one after another in one bounded process (a Python start that imports torch each would cost more than
# the stage): each one's exit code and output between markers
TEN_STAGES = """
import shutil, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import train
from small_profile import SMALL_PROFILES
from training.errors import run_cli

train.PROFILES = SMALL_PROFILES
for attempt in range(1, 11):
    shutil.rmtree({cache!r}, ignore_errors=True)
    print(f"=== run {{attempt}}", flush=True)
    try:
        run_cli(train.main, {argv!r})
        code = 0
    except SystemExit as done:
        code = done.code
    print(f"=== exit {{code}}", flush=True)
"""


@pytest.mark.slow
def test_a_stage_that_builds_its_cache_in_set_up_never_hangs(twice_profile_size, tmp_path):
    argv = stage_args(twice_profile_size, 1, "--restart", experiment="cache-in-set-up")
    code = TEN_STAGES.format(
        repo=str(REPO), tests=str(REPO / "tests"), cache=str(twice_profile_size / ".cache"), argv=argv
    )
    result = run_script(code, tmp_path, timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    runs = result.stdout.split("=== run ")[1:]
    assert len(runs) == 10, result.stdout
    for attempt, out in enumerate(runs, start=1):
        assert out.startswith(f"{attempt}\n") and out.rstrip().endswith("=== exit 0"), f"run {attempt}:\n{out}"
        # train and val through the pool of 2 processes (and the full-resolution val labels, in-process)
        pool_builds = [line for line in out.splitlines() if "cache: writing" in line and "(2 processes" in line]
        assert len(pool_builds) == 2 and "4 train" in pool_builds[0] and "2 val" in pool_builds[1], out
        assert "epoch 1/1 |" in out
