# ruff: noqa: F811 (the fixtures imported from chain_helpers are the tests' parameters)
"""Issue 21 on the tests' real Slurm (tests/slurm_cluster.py) with stock settings (Slurm's default KillWait of 30 s and
DependencyParameters): what requeues, cancels, a user's .env and a recipe given through a job do to a chain.

- one-shot flags (--restart) act once: a stage given `-- --restart` and preempted twice trains each epoch once;
- `scancel` of a 2-task `srun` step (gloo on the CPU) leaves a state that the next submission resumes from, the
  chain's log says that the state was saved and how long after SIGTERM;
- `.env` cannot change which stage runs nor its settings;
- `--recipe mmseg` through a job gets the recipe's values (no flag of main*.sh hides them).
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import pytest
from chain_helpers import (  # noqa: F401 (fixture: demo_data)
    REPO,
    STUDENT,
    TEACHER,
    TINY,
    copy_repo,
    demo_data,
    eid,
    load_state,
    read_output,
    save_fresh_model,
    slurm_cluster,
    submit,
    write_demo_data,
)

from training.engine.step_monitor import CHECK_EVERY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STOCK_KILL_WAIT = 30  # Slurm's default KillWait


@pytest.fixture(scope="module")
def stock_cluster():
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster.SlurmCluster(cpus=72, gpus=4, kill_wait=STOCK_KILL_WAIT) as running:
        yield running


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory) -> Path:
    """48 train + 1 val images of 256x128: 12 steps per epoch for 2 processes of batch 2 (a stop flag is read at
    steps 10 and 12 under DDP: a stop mid-epoch is possible)."""
    return write_demo_data(tmp_path_factory, "wide_demo", 48, 1, (256, 128))


def wait_for(cluster, job: str, output: str, done, what: str, timeout: float = 300) -> str:
    """Wait until done(log) holds; fail with the log if the job ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        log = read_output(output)
        if done(log):
            return log
        state = cluster.job_state(job)
        assert state not in slurm_cluster.FINISHED_STATES, f"job {job} {state} before {what}:\n{log}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{log}\n{cluster.logs_tail()}"
        time.sleep(0.5)


def release_after_requeue(cluster, job: str, restarts: int, timeout: float = 240) -> None:
    """A requeued job waits for the credential lifetime (120 s) before it may start again: once it is PENDING with
    `restarts` restarts (not in the requeue's own second), let it start 2 s from now (as in test_slurm.py)."""
    deadline = time.monotonic() + timeout
    while True:
        info = cluster.job_info(job)
        if info.get("JobState") == "PENDING" and info.get("Restarts") == str(restarts):
            cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], check=True)
            return
        assert info.get("JobState") not in slurm_cluster.FINISHED_STATES, info
        assert time.monotonic() < deadline, info
        time.sleep(0.5)


def epoch_lines(log: str) -> list[int]:
    return [int(m[1]) for m in re.finditer(r"^epoch (\d+)/\d+ \|", log, re.M)]


def history_epochs(repo: Path, experiment: str) -> list[int]:
    with open(repo / "checkpoints" / experiment / "history.csv", newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


# ------------------------------------------------------------------------------------------------ 21.1 one-shot flags
def test_restart_through_the_chain_acts_once_over_two_preemptions(stock_cluster, demo_data, tmp_path):
    cluster, repo, epochs = stock_cluster, copy_repo(tmp_path / "repo"), 5
    flags = ["--epochs", str(epochs), "--batch-size", "2", "--num-workers", "0", "--data-dir", str(demo_data)]
    ((_, job, experiment, output),) = submit(
        cluster, repo, TEACHER, "--run", "6", "--to-stage", "1", "--", *flags, "--restart"
    )
    for restarts in (1, 2):  # Slurm's warning signal after the next epoch line, then the job requeues itself
        seen = len(epoch_lines(read_output(output)))
        wait_for(
            cluster, job, output, lambda log, n=seen: len(epoch_lines(log)) > n, f"an epoch line in run {restarts}"
        )
        cluster.run(["scancel", "--batch", "--signal=USR1", job], check=True)
        release_after_requeue(cluster, job, restarts)
    state = cluster.wait_for_jobs([job], timeout=400)[job]
    log, info = read_output(output), cluster.job_info(job)
    assert state == "COMPLETED" and info["Restarts"] == "2", (info, log)
    assert log.count("requeueing job") == 2, log
    assert epoch_lines(log) == list(range(1, epochs + 1)), log  # each epoch trained once, over three runs
    assert len(re.findall(r"^resume: ", log, re.M)) == 2, log
    assert history_epochs(repo, experiment) == list(range(1, epochs + 1))
    assert load_state(repo, experiment)["epoch"] == epochs
    assert log.count("not passing --restart again") == 2, log


def test_restart_through_the_chain_reaches_its_first_stage_only(stock_cluster, demo_data, tmp_path):
    # stage 2 of a chain given --restart must not throw away a state of its own: it starts from stage 1's new model
    cluster, repo = stock_cluster, copy_repo(tmp_path / "repo")
    save_fresh_model(repo / "models" / f"{eid(5, 5)}.pth")  # run 7's teacher
    flags = [*TINY, "--data-dir", str(demo_data), "--restart"]
    jobs = submit(cluster, repo, STUDENT, "--run", "7", "--to-stage", "2", "--", *flags)
    states = cluster.wait_for_jobs([job for _, job, _, _ in jobs], timeout=400)
    logs = [read_output(output) for *_, output in jobs]
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    running = [re.search(r"^.*stage: running: .*$", log, re.M)[0] for log in logs]
    assert " --restart" in running[0] and " --restart" not in running[1], running


# ------------------------------------------------------------------------------------------------ 21.7 .env
def test_dotenv_cannot_change_which_stage_runs(stock_cluster, demo_data, tmp_path):
    cluster, repo = stock_cluster, copy_repo(tmp_path / "repo")
    (repo / ".env").write_text(
        "WANDB_MODE=disabled\nPROFILE=5\nEXPERIMENT_ID=from-dotenv\nWEIGHT_DECAY=0.5\nPREVIOUS_MODEL_PATH=none\n"
        "DATA_DIR=/nowhere\n"
    )
    jobs = submit(cluster, repo, TEACHER, "--run", "1", "--to-stage", "2", "--", *TINY, "--data-dir", str(demo_data))
    states = cluster.wait_for_jobs([job for _, job, _, _ in jobs], timeout=400)
    logs = [read_output(output) for *_, output in jobs]
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    assert sorted(p.name for p in (repo / "models").glob("*.pth")) == [f"{eid(1, 1)}.pth", f"{eid(1, 2)}.pth"]
    for stage in (1, 2):
        state = load_state(repo, eid(1, stage))
        assert state["args"]["profile"] == ("low", "medium")[stage - 1], state["args"]
        assert state["args"]["weight_decay"] == 0.0, state["args"]
        assert state["init_from"] == ("none" if stage == 1 else f"models/{eid(1, 1)}.pth")
        assert "warning: .env sets PROFILE, which no script reads" in logs[stage - 1]


# ------------------------------------------------------------------------------------------------ 21.8 recipes
def test_a_recipe_through_a_job_gets_its_own_values(stock_cluster, demo_data, tmp_path):
    cluster, repo = stock_cluster, copy_repo(tmp_path / "repo")
    flags = [*TINY, "--data-dir", str(demo_data), "--recipe", "mmseg"]
    ((_, job, experiment, output),) = submit(cluster, repo, TEACHER, "--run", "1", "--to-stage", "1", "--", *flags)
    assert cluster.wait_for_jobs([job], timeout=300)[job] == "COMPLETED", read_output(output)
    args = load_state(repo, experiment)["args"]
    # mmseg's weight decay and schedule (run 1 declares no weight decay), the user's epochs
    assert args["weight_decay"] == pytest.approx(4e-5) and args["lr_schedule"] == "poly", args
    assert args["optimizer"] == "sgd" and args["recipe"] == "mmseg", args
    assert load_state(repo, experiment)["epochs"] == 1
    assert "--weight-decay" not in read_output(output)


# ------------------------------------------------------------------------------------------------ 21.2 cancel, 2 tasks
# Profile 1, 12 steps per epoch: a stop mid-epoch. (Profile 5 was measured by hand, docs: a CPU step there takes
# ~30 s, longer than the KillWait, and the time to a saved state is the rest of the current step plus the save.)
CANCELS = {1: ("wide_data", ["--batch-size", "2"])}


@pytest.mark.parametrize("stage", sorted(CANCELS))
def test_cancel_of_a_two_task_step_saves_a_state_the_next_submission_resumes(stock_cluster, request, tmp_path, stage):
    cluster, repo = stock_cluster, copy_repo(tmp_path / "repo")
    data, batch = CANCELS[stage]
    if stage > 1:
        save_fresh_model(repo / "models" / f"{eid(1, stage - 1)}.pth")
    chain = ["--run", "1", "--from-stage", str(stage), "--to-stage", str(stage), "--gpus", "2"]
    flags = ["--epochs", "1", *batch, "--num-workers", "0", "--data-dir", str(request.getfixturevalue(data))]
    # the test node's name does not resolve: the ranks meet on the loopback address (the batch shell keeps it). Two
    # compute threads per task (4 on the 2 cores): with one, a quiet machine ran the whole epoch within the 3 s
    # below and the cancel came after it
    loopback = {"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "2"}
    ((_, job, experiment, output),) = submit(cluster, repo, TEACHER, *chain, "--", *flags, env=loopback)
    # a few seconds into the epoch's steps (the caches are built before the recipe line)
    wait_for(cluster, job, output, lambda log: "\nrecipe " in log, "the stage's set-up", timeout=600)
    time.sleep(3)
    cancelled_at = time.monotonic()
    cluster.run(["scancel", job], check=True)
    assert cluster.wait_for_jobs([job], timeout=STOCK_KILL_WAIT + 60)[job] == "CANCELLED"
    log = read_output(output)
    print(f"stage {stage}: job left the queue {time.monotonic() - cancelled_at:.1f} s after scancel\n{log}")
    saved = re.search(r"stage: stopped by SIGTERM \(exit 75\), state saved in (\d+\.\d) s after SIGTERM", log)
    assert saved and "failed" not in log, log  # (Slurm's SIGKILL after KillWait leaves no such line)
    state = load_state(repo, experiment)
    assert state["world_size"] == 2 and state["epoch"] == 0 and 0 < state["step"] < state["steps_per_epoch"], state
    # every process reads the stop flag at every step (it used to travel with the device check, every CHECK_EVERY
    # steps: a cancel a few steps into the epoch waited for step 10, longer than KillWait on a slow node)
    assert state["step"] < CHECK_EVERY, state
    print(f"stage {stage}: state saved {saved[1]} s after SIGTERM at epoch 1, step {state['step']} of 12")

    ((_, job2, _, output2),) = submit(cluster, repo, TEACHER, *chain, "--", *flags, env=loopback)  # the next one
    assert cluster.wait_for_jobs([job2], timeout=900)[job2] == "COMPLETED", read_output(output2)
    resumed = read_output(output2)
    assert f"resume: checkpoints/{experiment}/state.pth at epoch 1, step {state['step']} " in resumed, resumed
    assert load_state(repo, experiment)["epoch"] == 1 and epoch_lines(resumed) == [1]
