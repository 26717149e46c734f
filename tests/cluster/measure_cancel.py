"""By hand (not a test): the seconds from `scancel`'s SIGTERM to a saved state for a 2-task CPU stage on the tests'
real Slurm, and the epoch and step the next submission resumes from. Needs root and Slurm, like tests/slurm_cluster.py.

    .venv/bin/python tests/cluster/measure_cancel.py WORKDIR --stage 5 --kill-wait 120 --train 4

Run 1's stage (profile = stage) with 2 tasks of batch 2, `scancel` 3 s into epoch 2; a KillWait longer than Slurm's
default 30 s lets a slow CPU step finish, so that its time is measured instead of cut.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from chain_helpers import (  # noqa: E402
    REPO,
    TEACHER,
    copy_repo,
    eid,
    load_state,
    read_output,
    save_fresh_model,
    slurm_cluster,
    submit,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--stage", type=int, default=5, help="run 1's stage (its profile)")
    parser.add_argument("--kill-wait", type=int, default=30, help="the cluster's KillWait (Slurm's default 30)")
    parser.add_argument("--train", type=int, default=4, help="training images (4: one step per epoch)")
    args = parser.parse_args()
    data = args.workdir / "data"
    demo = [sys.executable, "-m", "demo.dataset", "--root", str(data), "--train", str(args.train), "--val", "1"]
    subprocess.run([*demo, "--size", "256x128"], cwd=REPO, check=True, capture_output=True)
    with slurm_cluster.SlurmCluster(cpus=72, gpus=4, kill_wait=args.kill_wait) as cluster:
        repo = copy_repo(args.workdir / "repo")
        if args.stage > 1:
            save_fresh_model(repo / "models" / f"{eid(1, args.stage - 1)}.pth")
        chain = ["--run", "1", "--from-stage", str(args.stage), "--to-stage", str(args.stage), "--gpus", "2"]
        flags = ["--epochs", "2", "--batch-size", "2", "--num-workers", "0", "--data-dir", str(data)]
        env = {"MASTER_ADDR": "127.0.0.1"}  # the test node's name does not resolve
        ((_, job, experiment, output),) = submit(cluster, repo, TEACHER, *chain, "--", *flags, env=env)
        while "epoch 1/2 |" not in read_output(output):
            assert cluster.job_state(job) not in slurm_cluster.FINISHED_STATES, read_output(output)
            time.sleep(0.5)
        time.sleep(3)
        cluster.run(["scancel", job], check=True)
        print("cancelled job:", cluster.wait_for_jobs([job], timeout=args.kill_wait + 300))
        log = read_output(output)
        state = load_state(repo, experiment)
        print(re.findall(r"^epoch 1/2 .*$|^.*state saved in .*$", log, re.M))
        print(f"state: epoch {state['epoch'] + 1}, step {state['step']} of {state['steps_per_epoch']}")
        ((_, job2, _, output2),) = submit(cluster, repo, TEACHER, *chain, "--", *flags, env=env)
        print("next submission:", cluster.wait_for_jobs([job2], timeout=1800))
        print(re.findall(r"^resume: .*$", read_output(output2), re.M))


if __name__ == "__main__":
    main()
