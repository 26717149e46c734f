"""The cluster: curriculum chains on SLURM (submission and what a job runs)."""
