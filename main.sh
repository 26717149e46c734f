#!/usr/bin/env bash
# One curriculum stage of a teacher run (train.py, cross-entropy): what a SLURM job runs.
# Edit the variables below, or set them in the environment (the SLURM chain does); extra arguments go to train.py.
#   bash main.sh                      # one stage on ./data/cityscapes with the original settings
#   bash main.sh --demo               # set up and train a stage on the built-in demo data on the CPU
#   bash main.sh --epochs 50          # any train.py flag overrides the ones below
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

EXPERIMENT_ID="${EXPERIMENT_ID:-fastscnn-training-experiment-01}"
PREVIOUS_MODEL_PATH="${PREVIOUS_MODEL_PATH:-none}"   # stage k > 1: models/<experiment id of stage k-1>.pth
PROFILE="${PROFILE:-low}"                            # stage k trains at profile k (1-5 or a name)
WEIGHT_DECAY="${WEIGHT_DECAY:-0}"                    # 1e-4 in runs 2, 4, 6, 8
DATA_DIR="${DATA_DIR:-./data/cityscapes}"

stage_setup "$@"
run_python train.py \
    --data-dir "$DATA_DIR" --batch-size 32 --epochs 100 --num-workers 8 --seed 42 \
    --experiment-id "$EXPERIMENT_ID" --previous-model-path "$PREVIOUS_MODEL_PATH" \
    --profile "$PROFILE" --weight-decay "$WEIGHT_DECAY" "${DEMO_ARGS[@]}" "${STAGE_ARGS[@]}"
