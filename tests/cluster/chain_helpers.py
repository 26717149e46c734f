"""What the cluster tests share: a copy of the repository's code, the environment and runner for the jobscripts,
recording stand-ins for the Slurm tools, the original registry written out by hand, and the real test cluster.
Fixtures are imported by the test modules (a second conftest.py beside tests/conftest.py would clash with it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import slurm_cluster  # noqa: E402

TEACHER = "jobscript_slurm.sh"
STUDENT = "jobscript_slurm_distillation.sh"
PREFIX = "fastscnn-training-experiment-"
TINY = ["--epochs", "1", "--batch-size", "2", "--num-workers", "0"]


def eid(run: int, stage: int) -> str:
    return f"{PREFIX}{5 * (run - 1) + stage:02d}"


# ---------------------------------------------------------------------------------------------------- helpers
def _code_files() -> list[str]:
    """The repository's code files (tracked or not ignored), without tests/: what a job needs to run a stage (the
    run files included)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(REPO)) for p in REPO.glob("*") if p.is_file()]
        out += [str(p.relative_to(REPO)) for p in (REPO / "training").rglob("*") if p.is_file()]
    return sorted(
        f
        for f in out
        if f and (f.endswith((".py", ".sh")) or f.startswith("runs/")) and not f.startswith(("tests/", "."))
    )


def copy_repo(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in _code_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def stage_env(extra: dict | None = None) -> dict:
    """Environment for the jobscripts: the test's Python for the stages, W&B off, one thread, no stage variables
    inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "EXPERIMENT_ID",
            "PROFILE",
            "WEIGHT_DECAY",
            "DATA_DIR",
            "PREVIOUS_MODEL_PATH",
            "CONTAINER",
            "PREVIOUS_STUDENT_MODEL_PATH",
            "TRAINED_TEACHER_MODEL_PATH",
            "MAIN_SCRIPT",
            "FASTSCNN_ROOT",
        )
        and not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))
    }
    # one compute thread per stage process (conftest.py's one_thread): the 2-task steps and the stages of a chain
    # share the machine's cores, and OpenMP threads waiting for each other slow tiny stages down many times over
    env.update({"PYTHON": sys.executable, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def jobscript(repo: Path, script: str, *args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        ["bash", str(repo / script), *args],
        cwd=repo,
        env=env if env is not None else stage_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_fresh_model(path: Path) -> Path:
    """A valid Fast-SCNN state_dict (random weights), e.g. a teacher or a previous stage's model."""
    import torch

    sys.path.insert(0, str(REPO))
    import fast_scnn

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fast_scnn.Model().state_dict(), path)
    return path


def load_state(repo: Path, experiment_id: str) -> dict:
    import torch

    return torch.load(repo / "checkpoints" / experiment_id / "state.pth", map_location="cpu", weights_only=True)


def write_demo_data(tmp_path_factory, name: str, train: int, val: int, size: tuple[int, int]) -> Path:
    """A demo data set in the Cityscapes layout (`size`: width, height; seed 0) in a new temporary folder `name`."""
    from demo.dataset import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp(name) / "cityscapes", num_train=train, num_val=val, size=size)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """2 train + 1 val images of 256x128 in the Cityscapes layout (read-only for the tests)."""
    return write_demo_data(tmp_path_factory, "slurm_demo", 2, 1, (256, 128))


# a stand-in for sbatch/scancel/scontrol/srun/apptainer that records its arguments (one JSON line per call) and
# prints job ids from 101
FAKE_TOOL = """#!{python}
import json, os, sys
log = os.environ["FAKE_SLURM_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if os.path.basename(sys.argv[0]) == "sbatch":
    n = sum(1 for c in calls if c[0] == "sbatch") + 1
    if str(n) == os.environ.get("FAKE_SBATCH_FAIL_AT"):
        sys.exit("sbatch: error: Batch job submission failed: fake failure")
    print(100 + n)
if os.path.basename(sys.argv[0]) == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    print(os.environ.get("FAKE_HOSTNAMES", "").replace(",", "\\n"))
if os.path.basename(sys.argv[0]) == "srun":
    print("fake srun: MASTER_ADDR=%s MASTER_PORT=%s" % (os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")))
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """PATH with recording fake Slurm tools and apptainer; returns (env, calls()), calls() listing the recorded argv."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name in ("sbatch", "scancel", "scontrol", "srun", "apptainer"):
        tool = bin_dir / name
        tool.write_text(FAKE_TOOL.format(python=sys.executable))
        tool.chmod(0o755)
    log = tmp_path / "fake_slurm.jsonl"
    # the chain as on a login node without torch (fast: no import of the training script); the tests of the flag
    # checks turn it back on (checked_env)
    env = stage_env(
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_SLURM_LOG": str(log),
            "FASTSCNN_TEST_CHAIN_NO_IMPORT": "1",
        }
    )

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


def checked(env: dict) -> dict:
    """`env` with the chain's checks of the flags against the training script's own parser (imports torch)."""
    return {k: v for k, v in env.items() if k != "FASTSCNN_TEST_CHAIN_NO_IMPORT"}


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


def export_vars(argv: list[str]) -> dict:
    """The variables an sbatch command line passes with --export=ALL,K=V,..."""
    export = next(a for a in argv if a.startswith("--export="))[len("--export=") :].split(",")
    assert export[0] == "ALL"
    return dict(item.split("=", 1) for item in export[1:])


def _dry_run_commands(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"job\d=\$\(sbatch ", line)]


def job_side(words: list[str]) -> tuple[str, list[str], dict]:
    """(main*.sh, one-shot flags, {flag: value}) of a job's command line: `... JOBSCRIPT --stage --script S
    [--once F]... -- FLAGS` (a flag without a value maps to True)."""
    words = words[words.index("--stage") + 1 :]
    script, once = "", []
    while words[0] != "--":
        option, value, words = words[0], words[1], words[2:]
        if option == "--script":
            script = value
        else:
            assert option == "--once", words
            once.append(value)
    flags, words = {}, words[1:]
    for i, word in enumerate(words):
        if word.startswith("--"):
            assert word not in flags, f"{word} given twice: {words}"
            flags[word] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
    return script, once, flags


def dry_run_job_side(line: str) -> tuple[str, list[str], dict]:
    return job_side(shlex.split(line[line.index("$(") + 2 : -1]))


# the original registry (DESIGN.md), written out by hand: run -> (main*.sh, weight decay, teacher run)
ORIGINAL_RUNS = {
    1: ("main.sh", None, None),
    2: ("main.sh", "1e-4", None),
    3: ("main_distillation.sh", None, 1),
    4: ("main_distillation.sh", "1e-4", 2),
    5: ("main_dice.sh", None, None),
    6: ("main_dice.sh", "1e-4", None),
    7: ("main_distillation_dice.sh", None, 5),
    8: ("main_distillation_dice.sh", "1e-4", 6),
}


def expected_flags(run: int, stage: int, teacher: str | None = None, **extra) -> dict:
    """A stage's flags as the registry gives them (weight decay None: the recipe's, so not on the command line)."""
    script, weight_decay, teacher_run = ORIGINAL_RUNS[run]
    previous = "none" if stage == 1 else f"models/{eid(run, stage - 1)}.pth"
    flags = {"--run": str(run), "--stage": str(stage), "--experiment-id": eid(run, stage), "--profile": str(stage)}
    flags["--epochs"] = "100"
    if weight_decay:
        flags["--weight-decay"] = weight_decay
    if teacher_run:
        flags["--previous-student-model-path"] = previous
        flags["--trained-teacher-model-path"] = teacher or f"models/{eid(teacher_run, 5)}.pth"
    else:
        flags["--previous-model-path"] = previous
    return {**flags, **extra}


FAKE_MAIN = """#!/bin/bash
# a stand-in for a main*.sh: stops with exit 75 on USR1/TERM (like a stage that saved its state)
trap 'echo "fake stage: got USR1"; sleep 1; exit 75' USR1
trap 'echo "fake stage: got TERM"; sleep 1; exit 75' TERM
echo "fake stage: $0 $* ready"
for i in $(seq 1 ${FAKE_STAGE_TENTHS:-30}); do sleep 0.1; done
echo "fake stage: finished"
"""


def _stage_env(env: dict, **extra) -> dict:
    env = {k: v for k, v in env.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}  # the batch shell sets them
    return dict(env, **extra)


def _submitted(stdout: str) -> list[tuple[int, str, str, str]]:
    """(stage, job id, experiment id, output path) from a submission's output."""
    return [
        (int(m[1]), m[2], m[3], m[4])
        for m in re.finditer(r"^stage (\d): job (\d+) +(\S+) +profile \d +(\S+)$", stdout, re.M)
    ]


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster.SlurmCluster(cpus=72, gpus=4) as running:
        yield running


def submit(cluster, repo: Path, script: str, *args: str, env: dict | None = None) -> list[tuple[int, str, str, str]]:
    result = cluster.run(["bash", str(repo / script), *args], cwd=repo, env=stage_env(env))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = _submitted(result.stdout)
    assert jobs, result.stdout
    return jobs


def read_output(path: str) -> str:
    return Path(path).read_text(errors="replace") if Path(path).exists() else "<no output file>"
