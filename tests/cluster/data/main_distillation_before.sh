#!/usr/bin/env bash
# One curriculum stage of a student run (train_distillation.py): what a SLURM job runs.
# Edit the variables below or set them in the environment; extra arguments go to train_distillation.py.
# The same trained teacher (a teacher run's stage 5) serves the student's whole curriculum.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source training/cluster/stage_env.sh

EXPERIMENT_ID="${EXPERIMENT_ID:-fastscnn-training-experiment-11}"
TRAINED_TEACHER_MODEL_PATH="${TRAINED_TEACHER_MODEL_PATH:-models/fastscnn-training-experiment-05.pth}"
PREVIOUS_STUDENT_MODEL_PATH="${PREVIOUS_STUDENT_MODEL_PATH:-none}"   # stage k > 1: the student of stage k-1
PROFILE="${PROFILE:-low}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0}"
DATA_DIR="${DATA_DIR:-./data/cityscapes}"
ALPHA="${ALPHA:-0.5}"
TEMPERATURE="${TEMPERATURE:-4.0}"

stage_setup "$@"
run_python train_distillation.py \
    --data-dir "$DATA_DIR" --batch-size 32 --epochs 100 --num-workers 8 --seed 42 \
    --experiment-id "$EXPERIMENT_ID" --trained-teacher-model-path "$TRAINED_TEACHER_MODEL_PATH" \
    --previous-student-model-path "$PREVIOUS_STUDENT_MODEL_PATH" --alpha "$ALPHA" --temperature "$TEMPERATURE" \
    --profile "$PROFILE" --weight-decay "$WEIGHT_DECAY" "${DEMO_ARGS[@]}" "${STAGE_ARGS[@]}"
