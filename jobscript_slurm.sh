#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=18
#SBATCH --gpus=1
#SBATCH --partition=gpu_a100
#SBATCH --time=24:00:00
#SBATCH --job-name=fastscnn-training
#SBATCH --output=slurms/%x-%j.out
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#
# Fast-SCNN teacher runs (train.py, train_dice.py): the original's runs 1, 2, 5, 6; each run is a file runs/NN.toml.
#   bash jobscript_slurm.sh --run N [--from-stage K] [--to-stage K] [--dry-run] [--local] [--gpus N --nodes M] [-- flags]
#       submits the stages of run N as SLURM jobs chained with --dependency=afterok (training/cluster/chain.py)
#   sbatch jobscript_slurm.sh [-- flags]   (what each job runs): one stage of main.sh, or of the main*.sh the chain names;
#       signals and requeue: training/cluster/stage_job.sh
# See `bash jobscript_slurm.sh --help`.
set -euo pipefail

# the repository: this file's folder, or (inside a job, where Slurm runs a copy of this file) the one the chain names
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "$here/training/cluster/stage_job.sh" ]]; then CHAIN_ROOT="$here"; else CHAIN_ROOT="${FASTSCNN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"; fi
# shellcheck source=training/cluster/stage_job.sh
source "$CHAIN_ROOT/training/cluster/stage_job.sh"
job_main jobscript_slurm.sh main.sh "$@"
