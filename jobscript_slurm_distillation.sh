#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=18
#SBATCH --gpus=1
#SBATCH --partition=gpu_a100
#SBATCH --time=24:00:00
#SBATCH --job-name=fastscnn-distillation
#SBATCH --output=slurms/%x-%j.out
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#
# Fast-SCNN student runs 3, 4 (main_distillation.sh) and 7, 8 (main_distillation_dice.sh), distilled from the
# trained teacher of run 1, 2, 5, 6 (models/fastscnn-training-experiment-05, -10, -25, -30.pth); weight decay 0 / 1e-4.
#   bash jobscript_slurm_distillation.sh --run 3 [--teacher PATH] [--from-stage K] [--dry-run] [--local]
#                                       [--gpus N --nodes M] [-- train args]
#       submits the five curriculum stages of run 3 as SLURM jobs chained with --dependency=afterok
#   sbatch jobscript_slurm_distillation.sh  (what each job runs): one stage of main_distillation*.sh, told by the
#       environment
# See `bash jobscript_slurm_distillation.sh --help`; the shared logic is in training/cluster/slurm_chain.sh.
set -euo pipefail

# the repository: this file's folder, or (inside a job, where Slurm runs a copy of this file) the one the chain names
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "$here/training/cluster/slurm_chain.sh" ]]; then CHAIN_ROOT="$here"; else CHAIN_ROOT="${FASTSCNN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"; fi
CHAIN_JOBSCRIPT="jobscript_slurm_distillation.sh"
# shellcheck source=training/cluster/slurm_chain.sh
source "$CHAIN_ROOT/training/cluster/slurm_chain.sh"
chain_main student "$@"
