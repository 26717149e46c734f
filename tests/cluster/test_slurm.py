"""The SLURM curriculum chains: jobscript_slurm.sh / jobscript_slurm_distillation.sh (the run files runs/NN.toml, the
submission training/cluster/chain.py, the job side training/cluster/stage_job.sh).

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

# ruff: noqa: F811 (the fixtures imported from chain_helpers are the tests' parameters)
from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain_helpers import (  # noqa: F401 (fixtures: cluster, demo_data, fake_slurm, repo_copy)
    FAKE_MAIN,
    ORIGINAL_RUNS,
    PREFIX,
    REPO,
    STUDENT,
    TEACHER,
    TINY,
    _dry_run_commands,
    _stage_env,
    checked,
    cluster,
    copy_repo,
    demo_data,
    dry_run_job_side,
    eid,
    expected_flags,
    export_vars,
    fake_slurm,
    job_side,
    jobscript,
    load_state,
    read_output,
    repo_copy,
    save_fresh_model,
    slurm_cluster,
    stage_env,
    submit,
    write_demo_data,
)


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
        assert "training/cluster/stage_job.sh" in (repo_copy / script).read_text()


REFUSALS = [
    (TEACHER, [], r"Usage:"),
    (TEACHER, ["--run", "99"], r"unknown run '99': no runs/99.toml \(runs: 1, 2"),
    (TEACHER, ["--run", "x"], r"unknown run 'x': expected a run number"),
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
    # flags after --: checked against the script's own parser before anything is submitted
    (TEACHER, ["--run", "1", "--", "--bogus"], r"^error: -- --bogus: not a flag of train\.py"),
    (TEACHER, ["--run", "1", "--", "--epochs", "x"], r"stage 1 \(\S+-01\): argument --epochs: invalid int value: 'x'"),
    (TEACHER, ["--run", "1", "--", "--lr", "-1"], r"stage 1 \(\S+-01\): --lr -1\.0: expected a positive number"),
    (
        TEACHER,
        ["--run", "1", "--", "--profile", "2"],
        r"-- --profile: names one stage, but this chain has stages 1-5 \(expected it in runs/01\.toml's stage entries",
    ),
    (TEACHER, ["--run", "2", "--from-stage", "2", "--dry-run", "--", "--model-path=x"], r"-- --model-path: names one"),
    (STUDENT, ["--run", "3", "--dry-run", "--", "--trained-teacher-model-path", "t.pth"], r"set by --teacher PATH"),
]


@pytest.mark.parametrize("script,args,message", REFUSALS, ids=[" ".join([s[:-3]] + a) for s, a, _ in REFUSALS])
def test_bad_submissions_exit_2(repo_copy, fake_slurm, script, args, message):
    env, calls = fake_slurm
    if "--" in args and "names one" not in message and "--teacher" not in message:
        env = checked(env)  # a flag's name or value: checked by the script's own parser
    result = jobscript(repo_copy, script, *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(message, result.stderr), result.stderr
    if args:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one clear line
        assert result.stderr.startswith("error: ")
    assert calls() == []  # nothing submitted
    assert not (repo_copy / "slurms").exists()


def test_a_repository_path_with_a_comma_is_refused_for_sbatch(tmp_path, fake_slurm):
    env, calls = fake_slurm
    repo = copy_repo(tmp_path / "repo,copy")
    result = jobscript(repo, TEACHER, "--run", "1", "--", *TINY, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"error: the repository path '{repo}' contains a comma, which sbatch --export cannot carry (expected a path "
        f"without one: move or link the repository)\n"
    )
    assert calls() == [] and not (repo / "slurms").exists() and not (repo / "models").exists()


def test_paths_with_white_space_and_commas_travel_as_arguments(tmp_path, fake_slurm):
    # the stage's settings are arguments of the job, not variables of --export: a space or a comma is just a character
    env, calls = fake_slurm
    repo = copy_repo(tmp_path / "my repo")
    teacher = save_fresh_model(tmp_path / "ckpt" / "my teacher, v2.pth")
    result = jobscript(repo, STUDENT, "--run", "3", "--to-stage", "2", "--teacher", str(teacher), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    sbatch = [c for c in calls() if c[0] == "sbatch"]
    assert len(sbatch) == 2
    for argv in sbatch:
        assert f"--chdir={repo}" in argv and str(repo / STUDENT) in argv
        assert argv[argv.index("--trained-teacher-model-path") + 1] == str(teacher)
    result = jobscript(repo, STUDENT, "--run", "3", "--local", "--dry-run", "--teacher", str(teacher), env=env)
    assert result.returncode == 0, result.stderr
    assert f"'{teacher}'" in result.stdout and f"bash '{repo}/{STUDENT}' --stage" in result.stdout


def test_student_refuses_missing_previous_checkpoint(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "models").mkdir()
    (repo_copy / "models" / f"{eid(5, 5)}.pth").write_bytes(b"teacher")
    result = jobscript(repo_copy, STUDENT, "--run", "7", "--from-stage", "2", env=env)
    assert result.returncode == 2
    assert f"previous checkpoint models/{eid(7, 1)}.pth not found" in result.stderr
    assert calls() == []


@pytest.mark.parametrize("run", [1, 2, 5, 6])
def test_dry_run_teacher_runs(repo_copy, fake_slurm, run):
    env, calls = fake_slurm
    user = ["--epochs", "1", "--data-dir", "/data/city scapes"]
    result = jobscript(repo_copy, TEACHER, "--run", str(run), "--dry-run", "--", *user, env=env)
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
        assert f"--job-name={eid(run, stage)}" in line
        assert f"--export=ALL,FASTSCNN_ROOT={repo_copy} {repo_copy}/{TEACHER} --stage --script" in line
        # each flag once: the user's --epochs 1 replaces the run file's 100 (command line > run file)
        script, once, flags = dry_run_job_side(line)
        assert (script, once) == (ORIGINAL_RUNS[run][0], [])
        assert flags == expected_flags(run, stage, **{"--epochs": "1", "--data-dir": "/data/city scapes"})
        assert line.endswith(" --epochs 1 --data-dir '/data/city scapes')")  # the user's words, as given, last

    # the printed commands are valid shell: run them with the fake sbatch and compare with a real submission
    subprocess.run(["bash", "-c", "\n".join(commands)], cwd=repo_copy, env=env, check=True)
    printed = calls()
    env2 = dict(env, FAKE_SLURM_LOG=str(Path(env["FAKE_SLURM_LOG"]).with_suffix(".real")))
    result = jobscript(repo_copy, TEACHER, "--run", str(run), "--", *user, env=env2)
    assert result.returncode == 0, result.stderr
    submitted = [json.loads(line) for line in Path(env2["FAKE_SLURM_LOG"]).read_text().splitlines()]
    assert printed == submitted


@pytest.mark.parametrize("run", [3, 4, 7, 8])
def test_dry_run_student_runs(repo_copy, fake_slurm, run):
    env, calls = fake_slurm
    result = jobscript(repo_copy, STUDENT, "--run", str(run), "--dry-run", "--", "--epochs", "1", env=env)
    assert result.returncode == 0, result.stderr  # --dry-run: the teacher need not exist yet
    commands = _dry_run_commands(result.stdout)
    assert len(commands) == 5 and calls() == []
    teacher = f"models/{eid(ORIGINAL_RUNS[run][2], 5)}.pth"
    assert f"teacher {teacher}" in result.stdout.splitlines()[0]
    for stage, line in enumerate(commands, start=1):
        assert ("--dependency" in line) == (stage > 1)
        assert dry_run_job_side(line) == (ORIGINAL_RUNS[run][0], [], expected_flags(run, stage, **{"--epochs": "1"}))


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
    assert dry_run_job_side(commands[0])[2] == expected_flags(3, 4, teacher="/ckpt/t.pth")
    assert '--dependency=afterok:"$job4"' in commands[1]
    assert dry_run_job_side(commands[1])[2] == expected_flags(3, 5, teacher="/ckpt/t.pth")


def test_local_dry_run_prints_the_stage_commands(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, TEACHER, "--run", "6", "--local", "--dry-run", "--", "--epochs", "1", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("bash ")]
    assert len(lines) == 5 and calls() == []
    for stage, line in enumerate(lines, start=1):
        assert line.startswith(f"bash {repo_copy}/{TEACHER} --stage --script main_dice.sh -- ")
        assert job_side(shlex.split(line))[2] == expected_flags(6, stage, **{"--epochs": "1"})
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
        assert export_vars(argv) == {"FASTSCNN_ROOT": str(repo_copy)}  # the stage's settings are its arguments
        assert argv[argv.index("--stage") - 1] == str(repo_copy / STUDENT)
        assert job_side(argv) == ("main_distillation_dice.sh", [], expected_flags(7, stage, **{"--epochs": "2"}))
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
def test_stage_mode_in_container_with_srun(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "my.sif").write_bytes(b"")
    (repo_copy / ".env").write_text("WANDB_API_KEY=x\n")
    result = jobscript(
        repo_copy,
        TEACHER,
        "--stage",
        "--script",
        "main_dice.sh",
        "--",
        "--epochs",
        "1",
        env=_stage_env(
            env,
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
    assert "fake stage: main.sh  ready" in result.stdout and calls() == []
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


def test_stage_mode_refuses_a_script_that_is_not_a_main_sh(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, STUDENT, "--stage", "--script", "train.py", env=_stage_env(env))
    assert result.returncode == 2
    assert result.stderr == f"error: --script train.py: expected a main*.sh of {repo_copy}\n"
    assert calls() == []


@pytest.mark.parametrize("restarts", ["0", "1", "2"])
def test_stage_mode_passes_one_shot_flags_on_the_jobs_first_run_only(repo_copy, fake_slurm, restarts):
    env, calls = fake_slurm
    (repo_copy / "main.sh").write_text(FAKE_MAIN)
    result = jobscript(
        repo_copy,
        TEACHER,
        *("--stage", "--script", "main.sh", "--once", "--restart", "--", "--epochs", "3"),
        env=_stage_env(env, SLURM_JOB_ID="42", SLURM_RESTART_COUNT=restarts, FAKE_STAGE_TENTHS="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if restarts == "0":
        assert "fake stage: main.sh --restart --epochs 3 ready" in result.stdout
    else:  # a requeued run resumes: --restart would throw away the state it saved before the requeue
        assert "fake stage: main.sh --epochs 3 ready" in result.stdout
        assert f"run {int(restarts) + 1} of this job (requeued): not passing --restart again" in result.stdout


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
    # the fake stage takes 1 s to "save" after the signal: the log says how long the stop took
    seconds = float(re.search(r"state saved in (\d+\.\d) s after SIGTERM", out)[1])
    assert 0.9 <= seconds < 10, out
    assert calls() == []


# ---------------------------------------------------------------------------------------------------- real Slurm
@pytest.fixture(scope="module")
def full_size_data(tmp_path_factory) -> Path:
    """2 train + 1 val images at Cityscapes' own 2048x1024: stages 1-4 build their caches inside the jobs."""
    return write_demo_data(tmp_path_factory, "slurm_full_size", 2, 1, (2048, 1024))


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
    assert f"--experiment-id {eid(5, 3)}" not in out  # the later stages were not run
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
    assert (
        f"stage: running: bash main.sh --run 2 --stage 5 --experiment-id {eid(2, 5)} --profile 5 --weight-decay 1e-4 "
        f"--previous-model-path models/{eid(2, 4)}.pth --epochs 1 "
    ) in out
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
        assert f"--run 1 --stage {stage} --experiment-id {eid(1, stage)} --profile {stage} --previous-model-path" in log
        assert "--weight-decay" not in log  # run 1: the recipe's (0)
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
