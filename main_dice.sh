#!/usr/bin/env bash
# One curriculum stage of train_dice.py (cross-entropy + Dice; a teacher): what a SLURM job runs, with the flags that
# the chain resolves from the run file (bash jobscript_slurm.sh --run N). Any train_dice.py flag works here:
#   bash main_dice.sh --demo                             # set up, write the demo data, train a short stage on the CPU
#   bash main_dice.sh --profile 2 --experiment-id NAME ...
# Which value wins: the flags given > the run file > the recipe (--recipe) > the script's defaults (--help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

stage_run train_dice.py demo-fastscnn-training-experiment-21 "$@"
