"""Running a comparison's arms: here, one arm after another and each arm's stages in order (the chain's --local:
training/cluster/chain.py, through the jobscript's stage mode as a job would), or as SLURM chains side by side (one
chain per arm, submitted at once). A stage already complete (its model written, its history.csv with all its
epochs) is not run again: a rerun of the same command continues where the last one stopped.
"""

from __future__ import annotations

from types import SimpleNamespace

from training.cluster import chain
from training.cluster import runs as registry
from training.compare.plan import ArmPlan, Plan
from training.engine.history import FILE_NAME, read_history


def stage_done(arm: ArmPlan, job, epochs: int) -> bool:
    checkpoints = arm.output_dir / "checkpoints" / job.experiment_id
    model = arm.output_dir / "models" / f"{job.experiment_id}.pth"
    trained = sum(int(row["epoch"]) >= 1 for row in read_history(checkpoints / FILE_NAME))
    return model.is_file() and trained >= epochs


def jobs_left(arm: ArmPlan) -> list:
    """The arm's stages from its first incomplete one (later stages start from the earlier ones' models)."""
    for index, (job, epochs) in enumerate(zip(arm.jobs, arm.epochs)):
        if not stage_done(arm, job, epochs):
            return arm.jobs[index:]
    return []


def _options(arm: ArmPlan, dry_run: bool) -> SimpleNamespace:
    return SimpleNamespace(root=registry.REPO, jobscript=arm.jobscript, dry_run=dry_run, gpus=1, nodes=1)


def _what(arm: ArmPlan, jobs: list) -> str:
    first, last = jobs[0].number, jobs[-1].number
    return f"arm '{arm.name}' ({arm.run.script}, epochs {'+'.join(map(str, arm.epochs))}): stages {first}-{last}"


def run_locally(plan: Plan, dry_run: bool = False) -> int:
    """Every arm here, in the plan's order; the first failure stops (its exit code is returned)."""
    for arm in plan.arms:
        jobs = arm.jobs if dry_run else jobs_left(arm)
        if not jobs:
            chain.log(f"compare: arm '{arm.name}' is complete in {arm.output_dir} (not run again)")
            continue
        code = chain.run_local(_options(arm, dry_run), arm.run, jobs, _what(arm, jobs))
        if code:
            chain.log(f"compare: arm '{arm.name}' stopped (exit {code}); the same command continues it")
            return code
    return 0


def submit_chains(plan: Plan, dry_run: bool = False) -> None:
    """One SLURM chain per arm, submitted at once: the arms run side by side."""
    for arm in plan.arms:
        jobs = arm.jobs if dry_run else jobs_left(arm)
        if jobs:
            chain.submit(_options(arm, dry_run), arm.run, jobs, _what(arm, jobs))
