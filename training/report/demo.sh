#!/bin/bash
# A report of two tiny curricula in one command, on the CPU in a few minutes:
#   bash training/report/demo.sh WORKDIR [EPOCHS]
# In WORKDIR (created; its models/, checkpoints/, measurements/ are what a repository run writes): a demo data set,
# teacher run 1 stages 1-2 (train.py, profiles low and medium), student run 3 stages 1-2 (train_distillation.py,
# taught by the teacher's stage 2), the efficiency of both final models (the teacher's also exported to ONNX and
# timed at 1024x2048), then `python -m training.report` -> WORKDIR/measurements/report.md and graphs/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${1:?usage: bash training/report/demo.sh WORKDIR [EPOCHS]}"
epochs="${2:-6}"
python="${PYTHON:-python}"
mkdir -p "$work"
cd "$work"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE="${WANDB_MODE:-disabled}"
data="$work/data"
[[ -d "$data/leftImg8bit" ]] || "$python" -m training.demo_data --root "$data" --train 16 --val 4 --size 512x256
common=(--data-dir "$data" --epochs "$epochs" --batch-size 4 --num-workers 1 --lr 5e-3 --lr-schedule onecycle)
teacher=demo-fastscnn-training-experiment
"$python" "$repo/train.py" "${common[@]}" --profile 1 --experiment-id "$teacher-01"
"$python" "$repo/train.py" "${common[@]}" --profile 2 --experiment-id "$teacher-02" \
    --previous-model-path "models/$teacher-01.pth"
"$python" "$repo/train_distillation.py" "${common[@]}" --profile 1 --experiment-id "$teacher-11" \
    --trained-teacher-model-path "models/$teacher-02.pth"
"$python" "$repo/train_distillation.py" "${common[@]}" --profile 2 --experiment-id "$teacher-12" \
    --trained-teacher-model-path "models/$teacher-02.pth" --previous-student-model-path "models/$teacher-11.pth"
"$python" "$repo/evaluate_efficiency.py" --current-model-path "models/$teacher-02.pth" --data-dir "$data" \
    --profile medium --resolution 1024x2048 --export-onnx "models/$teacher-02.onnx" --num-workers 1
"$python" "$repo/evaluate_efficiency.py" --current-model-path "models/$teacher-12.pth" --data-dir "$data" \
    --profile medium --num-workers 1
"$python" -m training.report
