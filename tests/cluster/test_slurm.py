"""The SLURM curriculum chains: jobscript_slurm.sh / jobscript_slurm_distillation.sh (+ cluster/slurm_chain.sh).

Three groups:
- plain fast tests (no Slurm): usage, refusals with exit code 2, --dry-run, the submission logic against a fake
  `sbatch` that records its arguments;
- `slow` tests of --local: real stages on tiny demo data, run here one after another;
- `slurm` + `slow` tests against a real single-node Slurm cluster started on loopback (tests/slurm_cluster.py):
  run 1 as five chained jobs, a failing chain, a distillation stage, a preempted (USR1) stage that requeues and
  resumes. They need root and Debian's munge/slurmctld/slurmd/slurm-client, and skip only when those are missing.

Every test works in its own copy of the repository's code files (so models/, slurms/, checkpoints/ stay out of the
checkout) with the test's Python (PYTHON=sys.executable, which the main*.sh scripts use).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
    """The repository's code files (tracked or not ignored), without tests/: what a job needs to run a stage."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(REPO)) for p in REPO.glob("*") if p.is_file()]
        out += [str(p.relative_to(REPO)) for p in (REPO / "training").rglob("*") if p.is_file()]
    return sorted(f for f in out if f and f.endswith((".py", ".sh")) and not f.startswith(("tests/", ".")))


def copy_repo(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in _code_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def stage_env(extra: dict | None = None) -> dict:
    """Environment for the jobscripts: the test's Python for the stages, W&B off, no stage variables inherited."""
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
    env.update({"PYTHON": sys.executable, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
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


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """2 train + 1 val images of 256x128 in the Cityscapes layout (read-only for the tests)."""
    root = tmp_path_factory.mktemp("slurm_demo") / "cityscapes"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "demo.dataset",
            "--root",
            str(root),
            "--train",
            "2",
            "--val",
            "1",
            "--size",
            "256x128",
            "--seed",
            "0",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return root


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
    env = stage_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SLURM_LOG": str(log)})

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    return copy_repo(tmp_path / "repo")


def export_vars(argv: list[str]) -> dict:
    """The variables an sbatch command line passes with --export=ALL,K=V,..."""
    export = next(a for a in argv if a.startswith("--export="))[len("--export=") :].split(",")
    assert export[0] == "ALL"
    return dict(item.split("=", 1) for item in export[1:])


# ---------------------------------------------------------------------------------------------------- fast tests
@pytest.mark.parametrize("script", [TEACHER, STUDENT])
def test_help(repo_copy, script):
    result = jobscript(repo_copy, script, "--help")
    assert result.returncode == 0, result.stderr
    for word in ("Usage:", "--run R", "--from-stage", "--dry-run", "--local", "--gpus", "--nodes", "squeue"):
        assert word in result.stdout
    assert ("--teacher" in result.stdout) == (script == STUDENT)


def test_jobscripts_keep_the_original_header(repo_copy):
    for script in (TEACHER, STUDENT):
        lines = (repo_copy / script).read_text().splitlines()
        header = [line for line in lines if line.startswith("#SBATCH")]
        for option in (
            "--nodes=1",
            "--ntasks=1",
            "--cpus-per-task=18",
            "--gpus=1",
            "--partition=gpu_a100",
            "--time=24:00:00",
            "--output=slurms/%x-%j.out",
            "--requeue",
        ):
            assert f"#SBATCH {option}" in header, (script, option)
        assert any(re.fullmatch(r"#SBATCH --signal=B:USR1@\d+", line) for line in header)
        assert "training/cluster/slurm_chain.sh" in (repo_copy / script).read_text()


REFUSALS = [
    (TEACHER, [], r"Usage:"),
    (TEACHER, ["--run", "9"], r"unknown run '9'"),
    (TEACHER, ["--run", "x"], r"unknown run 'x'"),
    (TEACHER, ["--run", "3"], r"run 3 is a student .*jobscript_slurm_distillation\.sh --run 3"),
    (TEACHER, ["--run", "1", "--from-stage", "6"], r"--from-stage must be a stage 1-5, got '6'"),
    (TEACHER, ["--run", "1", "--from-stage", "0"], r"--from-stage must be a stage 1-5, got '0'"),
    (TEACHER, ["--run", "1", "--to-stage", "7"], r"--to-stage must be a stage 1-5"),
    (TEACHER, ["--run", "1", "--from-stage", "3"], rf"previous checkpoint models/{PREFIX}02\.pth not found"),
    (TEACHER, ["--run", "1", "--gpus", "0"], r"--gpus must be a positive integer"),
    (TEACHER, ["--run", "1", "--bogus"], r"unknown option '--bogus'"),
    (TEACHER, ["--run", "1", "--teacher", "x.pth"], r"--teacher is for student runs"),
    (STUDENT, ["--run", "1"], r"run 1 is a teacher run: submit it with jobscript_slurm\.sh --run 1"),
    (STUDENT, ["--run", "4"], rf"teacher checkpoint models/{PREFIX}10\.pth not found"),
    (STUDENT, ["--run", "8", "--teacher", "nothere.pth"], r"teacher checkpoint .*/nothere\.pth not found"),
    (STUDENT, ["--run", "3", "--local", "--gpus", "2"], r"--local runs one process per stage"),
    (
        STUDENT,
        ["--run", "3", "--teacher", "/ckpt/my teacher.pth"],
        r"teacher path '/ckpt/my teacher\.pth' contains a comma or white space",
    ),
    (
        STUDENT,
        ["--run", "3", "--teacher", "/ckpt/a,b.pth", "--dry-run"],
        r"teacher path '/ckpt/a,b\.pth' contains a comma",
    ),
]


@pytest.mark.parametrize("script,args,message", REFUSALS, ids=[" ".join([s[:-3]] + a) for s, a, _ in REFUSALS])
def test_bad_submissions_exit_2(repo_copy, fake_slurm, script, args, message):
    env, calls = fake_slurm
    result = jobscript(repo_copy, script, *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(message, result.stderr), result.stderr
    if args:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one clear line
        assert result.stderr.startswith("error: ")
    assert calls() == []  # nothing submitted
    assert not (repo_copy / "slurms").exists()


@pytest.mark.parametrize("folder", ["my repo", "repo,copy"])
@pytest.mark.parametrize("mode", [[], ["--local"]], ids=["sbatch", "local"])
def test_a_repository_path_with_a_space_or_comma_is_refused(tmp_path, fake_slurm, folder, mode):
    env, calls = fake_slurm
    repo = copy_repo(tmp_path / folder)
    result = jobscript(repo, TEACHER, "--run", "1", *mode, "--", *TINY, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"error: the repository path '{repo}' contains a comma or white space, which the job's "
        f"variables cannot carry (expected a path without them: move or link the repository)\n"
    )
    assert calls() == [] and not (repo / "slurms").exists() and not (repo / "models").exists()


def test_student_refuses_missing_previous_checkpoint(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "models").mkdir()
    (repo_copy / "models" / f"{eid(5, 5)}.pth").write_bytes(b"teacher")
    result = jobscript(repo_copy, STUDENT, "--run", "7", "--from-stage", "2", env=env)
    assert result.returncode == 2
    assert f"previous checkpoint models/{eid(7, 1)}.pth not found" in result.stderr
    assert calls() == []


def _dry_run_commands(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"job\d=\$\(sbatch ", line)]


@pytest.mark.parametrize(
    "run,script,weight_decay",
    [(1, "main.sh", "0"), (2, "main.sh", "1e-4"), (5, "main_dice.sh", "0"), (6, "main_dice.sh", "1e-4")],
)
def test_dry_run_teacher_runs(repo_copy, fake_slurm, run, script, weight_decay):
    env, calls = fake_slurm
    result = jobscript(
        repo_copy,
        TEACHER,
        "--run",
        str(run),
        "--dry-run",
        "--",
        "--epochs",
        "1",
        "--data-dir",
        "/data/city scapes",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    commands = _dry_run_commands(result.stdout)
    assert len(commands) == 5
    assert calls() == [] and not (repo_copy / "slurms").exists()  # nothing submitted, nothing created
    for stage, line in enumerate(commands, start=1):
        assert line.startswith(f"job{stage}=$(sbatch --parsable")
        if stage == 1:
            assert "--dependency" not in line and "--kill-on-invalid-dep" not in line
        else:  # a failed stage cancels the rest of the chain also where the cluster does not (stock Slurm)
            assert f'--dependency=afterok:"$job{stage - 1}" --kill-on-invalid-dep=yes' in line
        previous = "none" if stage == 1 else f"models/{eid(run, stage - 1)}.pth"
        assert (
            f"MAIN_SCRIPT={script},EXPERIMENT_ID={eid(run, stage)},PROFILE={stage},WEIGHT_DECAY={weight_decay},"
            f"PREVIOUS_MODEL_PATH={previous}"
        ) in line
        assert f"--job-name={eid(run, stage)}" in line
        assert line.endswith(f"{TEACHER} --stage -- --epochs 1 --data-dir '/data/city scapes')")

    # the printed commands are valid shell: run them with the fake sbatch and compare with a real submission
    subprocess.run(["bash", "-c", "\n".join(commands)], cwd=repo_copy, env=env, check=True)
    printed = calls()
    env2 = dict(env, FAKE_SLURM_LOG=str(Path(env["FAKE_SLURM_LOG"]).with_suffix(".real")))
    result = jobscript(
        repo_copy, TEACHER, "--run", str(run), "--", "--epochs", "1", "--data-dir", "/data/city scapes", env=env2
    )
    assert result.returncode == 0, result.stderr
    submitted = [json.loads(line) for line in Path(env2["FAKE_SLURM_LOG"]).read_text().splitlines()]
    assert printed == submitted


@pytest.mark.parametrize(
    "run,script,weight_decay,teacher_run",
    [
        (3, "main_distillation.sh", "0", 1),
        (4, "main_distillation.sh", "1e-4", 2),
        (7, "main_distillation_dice.sh", "0", 5),
        (8, "main_distillation_dice.sh", "1e-4", 6),
    ],
)
def test_dry_run_student_runs(repo_copy, fake_slurm, run, script, weight_decay, teacher_run):
    env, calls = fake_slurm
    result = jobscript(repo_copy, STUDENT, "--run", str(run), "--dry-run", "--", "--epochs", "1", env=env)
    assert result.returncode == 0, result.stderr  # --dry-run: the teacher need not exist yet
    commands = _dry_run_commands(result.stdout)
    assert len(commands) == 5 and calls() == []
    teacher = f"models/{eid(teacher_run, 5)}.pth"
    for stage, line in enumerate(commands, start=1):
        previous = "none" if stage == 1 else f"models/{eid(run, stage - 1)}.pth"
        assert (
            f"MAIN_SCRIPT={script},EXPERIMENT_ID={eid(run, stage)},PROFILE={stage},WEIGHT_DECAY={weight_decay},"
            f"PREVIOUS_STUDENT_MODEL_PATH={previous},TRAINED_TEACHER_MODEL_PATH={teacher}"
        ) in line
        assert ("--dependency" in line) == (stage > 1)
        assert f"{STUDENT} --stage -- --epochs 1)" in line


def test_dry_run_from_stage_teacher_override_and_multi_gpu(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(
        repo_copy,
        STUDENT,
        "--run",
        "3",
        "--from-stage",
        "4",
        "--teacher",
        "/ckpt/t.pth",
        "--gpus",
        "4",
        "--nodes",
        "2",
        "--dry-run",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    commands = _dry_run_commands(result.stdout)
    assert len(commands) == 2 and calls() == []
    assert commands[0].startswith(
        "job4=$(sbatch --parsable --nodes=2 --ntasks=8 --ntasks-per-node=4 --gpus=8 "
        "--gpus-per-node=4 --job-name=" + eid(3, 4)
    )
    assert f"PREVIOUS_STUDENT_MODEL_PATH=models/{eid(3, 3)}.pth,TRAINED_TEACHER_MODEL_PATH=/ckpt/t.pth" in commands[0]
    assert '--dependency=afterok:"$job4"' in commands[1] and "PROFILE=5" in commands[1]


def test_local_dry_run_prints_the_stage_commands(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, TEACHER, "--run", "6", "--local", "--dry-run", "--", "--epochs", "1", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("env ")]
    assert len(lines) == 5 and calls() == []
    assert (
        f"MAIN_SCRIPT=main_dice.sh EXPERIMENT_ID={eid(6, 3)} PROFILE=3 WEIGHT_DECAY=1e-4 "
        f"PREVIOUS_MODEL_PATH=models/{eid(6, 2)}.pth bash " in lines[2]
    )
    assert not (repo_copy / "models").exists()


def test_submission_prints_jobs_and_outputs(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "models").mkdir()
    (repo_copy / "models" / f"{eid(5, 5)}.pth").write_bytes(b"teacher")
    result = jobscript(repo_copy, STUDENT, "--run", "7", "--", "--epochs", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert (repo_copy / "slurms").is_dir()
    sbatch = [c for c in calls() if c[0] == "sbatch"]
    assert len(sbatch) == 5
    for stage, argv in enumerate(sbatch, start=1):
        job = 100 + stage
        assert argv[1] == "--parsable"
        assert (f"--dependency=afterok:{job - 1}" in argv) == (stage > 1)
        assert ("--kill-on-invalid-dep=yes" in argv) == (stage > 1)
        assert f"--chdir={repo_copy}" in argv
        assert argv[-5:] == [str(repo_copy / STUDENT), "--stage", "--", "--epochs", "2"]
        variables = export_vars(argv)
        assert variables["MAIN_SCRIPT"] == "main_distillation_dice.sh"
        assert variables["TRAINED_TEACHER_MODEL_PATH"] == f"models/{eid(5, 5)}.pth"
        assert variables["FASTSCNN_ROOT"] == str(repo_copy)
        assert re.search(
            rf"^stage {stage}: job {job} +{eid(7, stage)} .*{re.escape(str(repo_copy))}/slurms/"
            rf"{eid(7, stage)}-{job}\.out$",
            result.stdout,
            re.M,
        ), result.stdout


def test_failed_sbatch_cancels_the_jobs_already_submitted(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, TEACHER, "--run", "1", env=dict(env, FAKE_SBATCH_FAIL_AT="3"))
    assert result.returncode != 0
    assert "sbatch failed for stage 3" in result.stderr and "101 102" in result.stderr
    assert [c for c in calls() if c[0] == "scancel"] == [["scancel", "101", "102"]]


# ---------------------------------------------------------------------------------------------------- stage mode
FAKE_MAIN = """#!/bin/bash
# a stand-in for a main*.sh: stops with exit 75 on USR1/TERM (like a stage that saved its state)
trap 'echo "fake stage: got USR1"; sleep 1; exit 75' USR1
trap 'echo "fake stage: got TERM"; sleep 1; exit 75' TERM
echo "fake stage: $0 $* EXPERIMENT_ID=$EXPERIMENT_ID ready"
for i in $(seq 1 ${FAKE_STAGE_TENTHS:-30}); do sleep 0.1; done
echo "fake stage: finished"
"""


def _stage_env(env: dict, **extra) -> dict:
    env = {k: v for k, v in env.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}  # the batch shell sets them
    return dict(
        env,
        EXPERIMENT_ID=eid(5, 2),
        PROFILE="2",
        WEIGHT_DECAY="0",
        PREVIOUS_MODEL_PATH=f"models/{eid(5, 1)}.pth",
        **extra,
    )


def test_stage_mode_in_container_with_srun(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "my.sif").write_bytes(b"")
    (repo_copy / ".env").write_text("WANDB_API_KEY=x\n")
    result = jobscript(
        repo_copy,
        TEACHER,
        "--stage",
        "--",
        "--epochs",
        "1",
        env=_stage_env(
            env,
            MAIN_SCRIPT="main_dice.sh",
            CONTAINER="my.sif",
            SLURM_JOB_ID="42",
            SLURM_NTASKS="1",
            SLURM_CPUS_PER_TASK="18",
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls() == [
        [
            "srun",
            "--kill-on-bad-exit=1",
            "apptainer",
            "exec",
            "--nv",
            "--env",
            "PYTHON=python3",
            "--env-file",
            ".env",
            "my.sif",
            "bash",
            "main_dice.sh",
            "--epochs",
            "1",
        ]
    ]
    (repo_copy / ".env").unlink()
    result = jobscript(repo_copy, TEACHER, "--stage", env=_stage_env(env, CONTAINER="my.sif"))  # no Slurm: no srun
    assert result.returncode == 0
    assert calls()[-1] == ["apptainer", "exec", "--nv", "--env", "PYTHON=python3", "my.sif", "bash", "main.sh"]


def test_stage_mode_without_container_uses_srun_only_for_several_tasks(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "main.sh").write_text(FAKE_MAIN)
    result = jobscript(
        repo_copy, TEACHER, "--stage", env=_stage_env(env, SLURM_JOB_ID="42", SLURM_NTASKS="1", FAKE_STAGE_TENTHS="1")
    )
    assert result.returncode == 0, result.stderr
    assert f"fake stage: main.sh  EXPERIMENT_ID={eid(5, 2)} ready" in result.stdout and calls() == []
    result = jobscript(
        repo_copy,
        TEACHER,
        "--stage",
        "--",
        "--x",
        env=_stage_env(
            env, SLURM_JOB_ID="12345", SLURM_NTASKS="4", SLURM_JOB_NODELIST="n[1-2]-ib", FAKE_HOSTNAMES="n1-ib,n2-ib"
        ),
    )
    assert result.returncode == 0, result.stderr
    # a dying task ends the step; the rendezvous comes from the batch shell's scontrol, not from a parser in Python
    assert calls() == [
        ["scontrol", "show", "hostnames", "n[1-2]-ib"],
        ["srun", "--kill-on-bad-exit=1", "bash", "main.sh", "--x"],
    ]
    assert f"fake srun: MASTER_ADDR=n1-ib MASTER_PORT={29500 + 12345 % 10000}" in result.stdout


def test_stage_mode_refuses_a_script_of_the_other_kind(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, STUDENT, "--stage", env=_stage_env(env, MAIN_SCRIPT="main.sh"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: MAIN_SCRIPT=main.sh is not a student stage script (expected one of: "
        "main_distillation.sh main_distillation_dice.sh)"
    )


def _signal_stage(repo: Path, env: dict, signum: int) -> tuple[int, str]:
    (repo / "main.sh").write_text(FAKE_MAIN)
    proc = subprocess.Popen(
        ["bash", str(repo / TEACHER), "--stage"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "ready" in line:
            break
    proc.send_signal(signum)
    time.sleep(0.3)
    proc.send_signal(signum)  # a second signal is not passed on (the stage would exit without saving)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, "".join(lines) + out


def test_stage_mode_forwards_usr1_once_and_requeues_the_job(repo_copy, fake_slurm):
    env, calls = fake_slurm
    rc, out = _signal_stage(repo_copy, _stage_env(env, SLURM_JOB_ID="77", FAKE_STAGE_TENTHS="100"), signal.SIGUSR1)
    assert rc == 0, out
    assert out.count("fake stage: got USR1") == 1 and "fake stage: finished" not in out
    assert "got SIGUSR1 again: the stage is already saving and stopping (not forwarded)" in out
    assert "requeueing job 77" in out
    assert calls() == [["scontrol", "requeue", "77"]]


def test_stage_mode_under_slurm_leaves_sigterm_to_slurm(repo_copy, fake_slurm):
    env, calls = fake_slurm
    # Slurm sends TERM to every process of a job it cancels: the shell does not pass it on nor requeue the job
    rc, out = _signal_stage(repo_copy, _stage_env(env, SLURM_JOB_ID="77", FAKE_STAGE_TENTHS="15"), signal.SIGTERM)
    assert rc == 0, out
    assert "got SIGTERM: Slurm signals every process of the job" in out
    assert "fake stage: got TERM" not in out and "fake stage: finished" in out
    assert calls() == []


def test_stage_mode_outside_slurm_forwards_sigterm(repo_copy, fake_slurm):
    env, calls = fake_slurm
    rc, out = _signal_stage(repo_copy, _stage_env(env, FAKE_STAGE_TENTHS="100"), signal.SIGTERM)
    assert rc == 75, out
    assert out.count("fake stage: got TERM") == 1
    assert "run the same command again to resume" in out
    assert calls() == []


# ---------------------------------------------------------------------------------------------------- real Slurm
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


def submit(cluster, repo: Path, script: str, *args: str) -> list[tuple[int, str, str, str]]:
    result = cluster.run(["bash", str(repo / script), *args], cwd=repo, env=stage_env())
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = _submitted(result.stdout)
    assert jobs, result.stdout
    return jobs


def read_output(path: str) -> str:
    return Path(path).read_text(errors="replace") if Path(path).exists() else "<no output file>"


@pytest.fixture(scope="module")
def full_size_data(tmp_path_factory) -> Path:
    """2 train + 1 val images at Cityscapes' own 2048x1024: stages 1-4 build their caches inside the jobs."""
    root = tmp_path_factory.mktemp("slurm_full_size") / "cityscapes"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "demo.dataset",
            "--root",
            str(root),
            "--train",
            "2",
            "--val",
            "1",
            "--size",
            "2048x1024",
            "--seed",
            "0",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


@pytest.fixture(scope="module")
def run1_chain(cluster, full_size_data, tmp_path_factory):
    """Run 1 submitted once, at the start of the cluster tests: it trains while the other Slurm tests run."""
    repo = copy_repo(tmp_path_factory.mktemp("run1") / "repo")
    jobs = submit(cluster, repo, TEACHER, "--run", "1", "--", *TINY, "--data-dir", str(full_size_data))
    dependencies = {job: cluster.job_info(job).get("Dependency", "") for _, job, _, _ in jobs}
    return {"repo": repo, "jobs": jobs, "dependencies": dependencies, "submitted_at": time.monotonic()}


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_failing_stage_cancels_the_rest_of_the_chain(cluster, run1_chain, demo_data, tmp_path):
    # a stock cluster: Slurm's default DependencyParameters (kill_invalid_depend would hide a chain left pending)
    assert "DependencyParameters" not in cluster.conf.read_text()
    repo = copy_repo(tmp_path / "repo")
    jobs = submit(cluster, repo, TEACHER, "--run", "2", "--", *TINY, "--data-dir", str(tmp_path / "no-such-dir"))
    assert [e for _, _, e, _ in jobs] == [eid(2, s) for s in range(1, 6)]
    ids = [job for _, job, _, _ in jobs]
    assert cluster.wait_for_jobs(ids[:1], timeout=180)[ids[0]] == "FAILED", read_output(jobs[0][3])
    failed_at = time.monotonic()
    while cluster.run(["squeue", "-h", "-o", "%i", "-t", "PD,CF,R,S", "-j", ",".join(ids[1:])]).stdout.strip():
        assert time.monotonic() - failed_at < 60, cluster.run(["squeue", "-j", ",".join(ids[1:])]).stdout
        time.sleep(0.5)
    print(f"stage 1 failed: the other 4 jobs left the queue within {time.monotonic() - failed_at:.1f} s")
    states = cluster.wait_for_jobs(ids, timeout=30)
    assert cluster.job_info(ids[0])["ExitCode"] == "2:0"
    assert "no-such-dir" in read_output(jobs[0][3])
    for job in ids[1:]:
        assert states[job] == "CANCELLED"
        assert cluster.job_info(job).get("Reason") == "DependencyNeverSatisfied"
    assert list((repo / "models").glob("*.pth")) == []
    assert [p.name for p in (repo / "slurms").glob("*.out")] == [f"{eid(2, 1)}-{ids[0]}.out"]


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_distillation_stage_runs_with_the_runs_teacher(cluster, run1_chain, demo_data, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    save_fresh_model(repo / "models" / f"{eid(1, 5)}.pth")  # run 3's teacher
    jobs = submit(cluster, repo, STUDENT, "--run", "3", "--to-stage", "1", "--", *TINY, "--data-dir", str(demo_data))
    ((stage, job, experiment, output),) = jobs
    assert (stage, experiment) == (1, eid(3, 1))
    assert output == f"{repo}/slurms/{eid(3, 1)}-{job}.out"
    state = cluster.wait_for_jobs([job], timeout=240)[job]
    log = read_output(output)
    assert state == "COMPLETED", log
    assert "bash main_distillation.sh" in log and "train_distillation.py" in log
    assert f"--trained-teacher-model-path models/{eid(1, 5)}.pth" in log
    assert "init: random" in log
    assert (repo / "models" / f"{eid(3, 1)}.pth").is_file()
    assert load_state(repo, eid(3, 1))["init_from"] == "none"


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_preempted_stage_requeues_and_resumes(cluster, run1_chain, demo_data, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    ((stage, job, experiment, output),) = submit(
        cluster,
        repo,
        TEACHER,
        "--run",
        "6",
        "--to-stage",
        "1",
        "--",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--data-dir",
        str(demo_data),
    )
    # wait until epoch 1 is done (the stage's signal handler is installed), then send Slurm's warning signal
    deadline = time.monotonic() + 240
    while "epoch 1/3" not in read_output(output):
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), read_output(output)
        assert time.monotonic() < deadline, read_output(output)
        time.sleep(0.5)
    cluster.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    # the stage saves and exits 75, the job requeues itself. Slurm holds a requeued job for the credential lifetime
    # (cred_expire, 120 s): slurmd revoked the first run's credential at the requeue and refuses ("Job credential
    # revoked", the job then FAILS) a new one issued in the same second or earlier. Release it sooner, but never
    # in the requeue's second: once it is PENDING again (not COMPLETING), at least 2 s later.
    released = False
    while True:
        info = cluster.job_info(job)
        if not released and info.get("JobState") == "PENDING" and info.get("Restarts", "0") != "0":
            cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], check=True)
            released = True
        if info.get("JobState") in slurm_cluster.FINISHED_STATES:
            break
        assert time.monotonic() < deadline + 120, (info, read_output(output), cluster.logs_tail())
        time.sleep(0.5)
    log = read_output(output)
    assert info["JobState"] == "COMPLETED", (log, info, cluster.logs_tail())
    assert int(info["Restarts"]) == 1, log
    assert "got SIGUSR1: forwarding it to the stage" in log
    assert "stopped by SIGUSR1" in log
    assert f"requeueing job {job}" in log
    assert "resume: " in log and "done: " in log
    assert log.index("stopped by SIGUSR1") < log.index("resume: ") < log.index("done: ")
    assert (repo / "models" / f"{eid(6, 1)}.pth").is_file()
    assert load_state(repo, eid(6, 1))["epoch"] == 3


# ---------------------------------------------------------------------------------------------------- --local
# (placed here so that they run while run 1 trains on the cluster, when there is one)
@pytest.mark.slow
def test_local_chain_runs_stages_in_order_and_stops_at_a_failure(repo_copy, demo_data, tmp_path):
    # a Python that fails (exit 3) for stage 2 of run 5 and runs everything else: stage 1 trains for real
    wrapper = tmp_path / "python-failing-stage-2"
    wrapper.write_text(
        f'#!/bin/bash\nif [[ " $* " == *" --experiment-id {eid(5, 2)} "* ]]; then\n'
        f'    echo "injected failure" >&2; exit 3\nfi\nexec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = stage_env({"PYTHON": str(wrapper)})
    result = jobscript(
        repo_copy, TEACHER, "--run", "5", "--local", "--", *TINY, "--data-dir", str(demo_data), env=env, timeout=300
    )
    out = result.stdout + result.stderr
    assert result.returncode == 3, out  # the failing stage's own exit code
    assert "train_dice.py" in out and "init: random" in out
    assert (repo_copy / "models" / f"{eid(5, 1)}.pth").is_file()
    assert f"{eid(5, 2)} failed with exit code 3" in out
    assert f"EXPERIMENT_ID={eid(5, 3)}" not in out  # the later stages were not run
    assert sorted(p.name for p in (repo_copy / "models").glob("*.pth")) == [f"{eid(5, 1)}.pth"]
    assert load_state(repo_copy, eid(5, 1))["init_from"] == "none"


@pytest.mark.slow
def test_local_from_stage_uses_the_previous_checkpoint(repo_copy, demo_data):
    save_fresh_model(repo_copy / "models" / f"{eid(2, 4)}.pth")
    result = jobscript(
        repo_copy,
        TEACHER,
        "--run",
        "2",
        "--local",
        "--from-stage",
        "5",
        "--to-stage",
        "5",
        "--",
        *TINY,
        "--data-dir",
        "/nonexistent/cityscapes",
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out  # the stage refuses the missing data dir (its exit 2), nothing trained
    assert "/nonexistent/cityscapes" in out
    assert f"EXPERIMENT_ID={eid(2, 5)} PROFILE=5 WEIGHT_DECAY=1e-4" in out
    assert f"PREVIOUS_MODEL_PATH=models/{eid(2, 4)}.pth" in out
    assert f"{eid(2, 5)} failed with exit code 2" in out
    assert not (repo_copy / "models" / f"{eid(2, 5)}.pth").exists()


# ---------------------------------------------------------------------------------------------------- run 1 on Slurm
@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_run1_chain_five_stages(cluster, run1_chain):
    repo, jobs = run1_chain["repo"], run1_chain["jobs"]
    ids = [job for _, job, _, _ in jobs]
    assert [(s, e) for s, _, e, _ in jobs] == [(s, eid(1, s)) for s in range(1, 6)]
    # five jobs in dependency order: each waited for the previous one (afterok) ...
    for k in range(1, 5):
        assert run1_chain["dependencies"][ids[k]].startswith(f"afterok:{ids[k - 1]}"), run1_chain["dependencies"]
    states = cluster.wait_for_jobs(ids, timeout=420)
    logs = [read_output(output) for _, _, _, output in jobs]
    assert all(state == "COMPLETED" for state in states.values()), (states, logs)
    # ... and started after it ended
    infos = [cluster.job_info(job) for job in ids]
    for k in range(1, 5):
        assert infos[k]["StartTime"] >= infos[k - 1]["EndTime"]
    assert sorted(p.name for p in (repo / "slurms").glob("*.out")) == sorted(
        f"{eid(1, s)}-{job}.out" for s, job, _, _ in jobs
    )
    assert sorted(p.name for p in (repo / "models").glob("*.pth")) == [f"{eid(1, s)}.pth" for s in range(1, 6)]
    for stage, log in enumerate(logs, start=1):
        assert f"EXPERIMENT_ID={eid(1, stage)} PROFILE={stage} WEIGHT_DECAY=0" in log
        # the cache, built in the job (its pool forked after the stage's signal handlers), at every profile (at 5 it
        # saves the PNG decoding)
        assert "cache: writing 2 train" in log and "cache: writing 1 val" in log, log
        state = load_state(repo, eid(1, stage))
        if stage == 1:
            assert "init: random" in log
            assert state["init_from"] == "none"
        else:
            previous = f"models/{eid(1, stage - 1)}.pth"
            assert re.search(rf"^init: .*{re.escape(previous)}$", log, re.M), log
            assert state["init_from"].endswith(previous), state["init_from"]
    rows = (repo / "measurements" / "durations.csv").read_text().splitlines()
    assert len(rows) == 6  # header + one row per stage
