#!/usr/bin/env bash
# One curriculum stage of a teacher run with cross-entropy + Dice (train_dice.py): what a SLURM job runs.
# Edit the variables below or set them in the environment; extra arguments go to train_dice.py (--demo: demo data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

EXPERIMENT_ID="${EXPERIMENT_ID:-fastscnn-training-experiment-21}"
PREVIOUS_MODEL_PATH="${PREVIOUS_MODEL_PATH:-none}"   # stage k > 1: models/<experiment id of stage k-1>.pth
PROFILE="${PROFILE:-low}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0}"
DATA_DIR="${DATA_DIR:-./data/cityscapes}"
DICE_LOSS_WEIGHT="${DICE_LOSS_WEIGHT:-1.0}"

stage_setup "$@"
run_python train_dice.py \
    --data-dir "$DATA_DIR" --batch-size 32 --epochs 100 --num-workers 8 --seed 42 \
    --experiment-id "$EXPERIMENT_ID" --previous-model-path "$PREVIOUS_MODEL_PATH" \
    --profile "$PROFILE" --weight-decay "$WEIGHT_DECAY" --dice-loss-weight "$DICE_LOSS_WEIGHT" \
    "${DEMO_ARGS[@]}" "${STAGE_ARGS[@]}"
