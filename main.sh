#!/usr/bin/env bash
# One curriculum stage of train.py (cross-entropy; a teacher): what a SLURM job runs, with the flags that the chain
# resolves from the run file (bash jobscript_slurm.sh --run N). Any train.py flag works here:
#   bash main.sh --demo                                  # set up, write the demo data, train a short stage on the CPU
#   bash main.sh --profile 2 --experiment-id NAME ...    # one stage with these flags, train.py's defaults for the rest
# Which value wins: the flags given > the run file > the recipe (--recipe) > the script's defaults (--help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

stage_run train.py demo-fastscnn-training-experiment-01 "$@"
