#!/usr/bin/env bash
# One curriculum stage of train_distillation.py (a student, distilled from a trained teacher): what a SLURM job runs,
# with the flags that the chain resolves from the run file (bash jobscript_slurm_distillation.sh --run N). Any
# train_distillation.py flag works here:
#   bash main_distillation.sh --demo --trained-teacher-model-path models/demo-fastscnn-training-experiment-01.pth
#   bash main_distillation.sh --profile 2 --experiment-id NAME --trained-teacher-model-path TEACHER.pth ...
# Which value wins: the flags given > the run file > the recipe (--recipe) > the script's defaults (--help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

stage_run train_distillation.py demo-fastscnn-training-experiment-11 "$@"
