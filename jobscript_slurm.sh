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
# Fast-SCNN teacher runs 1, 2 (main.sh, cross-entropy) and 5, 6 (main_dice.sh, + Dice); weight decay 0 / 1e-4.
#   bash jobscript_slurm.sh --run 1 [--from-stage K] [--dry-run] [--local] [--gpus N --nodes M] [-- train args]
#       submits the five curriculum stages of run 1 as SLURM jobs chained with --dependency=afterok
#   sbatch jobscript_slurm.sh  (what each job runs): one stage of main.sh / main_dice.sh, told by the environment
# See `bash jobscript_slurm.sh --help`; the shared logic is in training/cluster/slurm_chain.sh.
set -euo pipefail

# the repository: this file's folder, or (inside a job, where Slurm runs a copy of this file) the one the chain names
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "$here/training/cluster/slurm_chain.sh" ]]; then CHAIN_ROOT="$here"; else CHAIN_ROOT="${FASTSCNN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"; fi
CHAIN_JOBSCRIPT="jobscript_slurm.sh"
# shellcheck source=training/cluster/slurm_chain.sh
source "$CHAIN_ROOT/training/cluster/slurm_chain.sh"
chain_main teacher "$@"
