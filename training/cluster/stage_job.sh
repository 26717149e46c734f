# shellcheck shell=bash
# The job side of a curriculum chain, shared by jobscript_slurm.sh (teacher runs) and jobscript_slurm_distillation.sh
# (student runs). Sourced, not executed:
#
#     CHAIN_ROOT=/path/to/repo; source "$CHAIN_ROOT/training/cluster/stage_job.sh"; job_main main.sh "$@"
#
# Two modes:
#   submission  `bash jobscript_slurm.sh --run R [options] [-- flags]`: handed to the Python chain
#               (training/cluster/chain.py), which reads runs/NN.toml and submits the stages with sbatch;
#   stage       what a job runs (`--stage` first, or no arguments / `-- flags` under sbatch): one stage,
#                   --stage [--script main*.sh] [--once FLAG]... [--] FLAGS...
#               runs `bash main*.sh FLAGS` (default script: the jobscript's), under srun when there are several
#               tasks or a container, forwards Slurm's warning signal and requeues the job when the stage stopped
#               with its state saved. `--once FLAG` (the chain's one-shot flags, e.g. --restart) is passed on the
#               job's first run only: a requeued run (SLURM_RESTART_COUNT > 0) resumes instead.
# Everything runs on bash 4.2: no expansion of an array that can be empty under set -u.

CHAIN_EXIT_USAGE=2
CHAIN_EXIT_PREEMPTED=75 # the stages' "preempted, state saved, run again to resume" (training/errors.py)

_chain_log() { printf '[%s] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }
_chain_die() {
    printf 'error: %s\n' "$*" >&2
    exit "$CHAIN_EXIT_USAGE"
}
_chain_now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---------------------------------------------------------------- stage mode (inside a job)
# Signals. Slurm's warning before the time limit (--signal=B:USR1@300) and `scancel --batch --signal=USR1 <job>`
# reach only this shell: USR1 is forwarded to the stage, which saves its state and exits 75, and the job requeues
# itself. SIGTERM under Slurm (scancel, scontrol requeue, preemption, the time limit itself) is sent by Slurm to
# every process of the job, the stage included: forwarding it too would be the stage's "second signal, exit at once",
# and the job is then not requeued from here (a cancelled job stays cancelled; a requeue or preemption is Slurm's).
# Outside Slurm (--local, --stage) TERM reaches only this shell and is forwarded. The time from the first signal to
# the stage's exit is measured (Slurm kills what is left KillWait seconds after SIGTERM).
_chain_forward() { # signal
    local sig="$1"
    if ((CHAIN_SIGNAL_AT == 0)); then
        CHAIN_SIGNAL_AT="$(_chain_now_ms)"
        CHAIN_SIGNAL="$sig"
    fi
    if [[ "$sig" == TERM && -n "${SLURM_JOB_ID:-}" ]]; then
        CHAIN_GOT_TERM=1
        _chain_log "got SIGTERM: Slurm signals every process of the job, the stage saves its state and stops by itself"
        return 0
    fi
    if ((CHAIN_FORWARDED)); then
        # the stage would take a second signal as "exit at once, without saving": pass on only the first one
        _chain_log "got SIG$sig again: the stage is already saving and stopping (not forwarded)"
    elif [[ -n "${CHAIN_CHILD:-}" ]] && kill -0 "$CHAIN_CHILD" 2>/dev/null; then
        CHAIN_FORWARDED=1
        _chain_log "got SIG$sig: forwarding it to the stage (pid $CHAIN_CHILD), which saves its state and stops"
        kill -s "$sig" "$CHAIN_CHILD" 2>/dev/null || true
    else
        _chain_log "got SIG$sig (no stage running)"
    fi
}

_chain_run_forwarding() { # command...: run it in the background, forward USR1/TERM to it; its status in CHAIN_RC
    CHAIN_CHILD=""
    CHAIN_GOT_TERM=0
    CHAIN_FORWARDED=0
    CHAIN_SIGNAL_AT=0
    CHAIN_SIGNAL=""
    trap '_chain_forward USR1' USR1
    trap '_chain_forward TERM' TERM
    # (a script's background commands ignore SIGINT: give the stage back its Ctrl-C)
    (
        trap - INT QUIT
        exec "$@"
    ) &
    CHAIN_CHILD=$!
    while :; do
        CHAIN_RC=0
        wait "$CHAIN_CHILD" || CHAIN_RC=$?
        # a trapped signal interrupts `wait` (status > 128) while the stage is still finishing its step
        if ((CHAIN_RC > 128)) && kill -0 "$CHAIN_CHILD" 2>/dev/null; then continue; fi
        break
    done
    CHAIN_STOP_SECONDS=""
    if ((CHAIN_SIGNAL_AT > 0)); then
        local ms=$(($(_chain_now_ms) - CHAIN_SIGNAL_AT))
        CHAIN_STOP_SECONDS="$((ms / 1000)).$(((ms % 1000) / 100))"
    fi
    trap '' USR1 # a late warning signal must not kill this shell while it requeues the job
    trap - TERM
    CHAIN_CHILD=""
}

_chain_stage_command() { # script flags...: the command that runs the stage, in CHAIN_CMD
    local script="$1" container="${CONTAINER:-container.sif}" ntasks="${SLURM_NTASKS:-1}"
    shift
    CHAIN_CONTAINER=""
    if [[ -f "$container" ]]; then
        CHAIN_CONTAINER="$container"
        # the container's own Python, not a host venv that PYTHON or .venv/ may name
        CHAIN_CMD=(apptainer exec --nv --env "PYTHON=${CONTAINER_PYTHON:-python3}")
        if [[ -f .env ]]; then CHAIN_CMD+=(--env-file .env); fi
        CHAIN_CMD+=("$container" bash "$script" "$@")
        if [[ -n "${SLURM_JOB_ID:-}" ]]; then CHAIN_CMD=(srun --kill-on-bad-exit=1 "${CHAIN_CMD[@]}"); fi
    else
        CHAIN_CMD=(bash "$script" "$@")
        if [[ -n "${SLURM_JOB_ID:-}" ]] && ((ntasks > 1)); then CHAIN_CMD=(srun --kill-on-bad-exit=1 "${CHAIN_CMD[@]}"); fi
    fi
    # (--kill-on-bad-exit: a task that dies ends the whole step, the other ranks do not wait for it in a collective)
}

_chain_rendezvous() { # the rendezvous of the ranks, from here, where scontrol exists (a container may not have it)
    if [[ -z "${MASTER_ADDR:-}" ]]; then
        MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1 || true)"
        [[ -n "$MASTER_ADDR" ]] || MASTER_ADDR="$(hostname)"
        export MASTER_ADDR
    fi
    export MASTER_PORT="${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 10000))}"
    _chain_log "stage: rendezvous of the ${SLURM_NTASKS} tasks at $MASTER_ADDR:$MASTER_PORT"
}

job_stage() { # default-script [--script S] [--once FLAG]... [--] flags...
    local script="$1" restarts="${SLURM_RESTART_COUNT:-0}" once_text=""
    shift
    # the flags for the stage: the one-shot ones first (on a first run), then the rest, kept in "$@"
    local -a once=(--)
    while (($#)); do
        case "$1" in
            --script) (($# >= 2)) || _chain_die "--script needs a main*.sh"; script="$2"; shift 2 ;;
            --once) (($# >= 2)) || _chain_die "--once needs a flag"; once+=("$2"); once_text+=" $2"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    cd "$CHAIN_ROOT" || _chain_die "cannot enter the repository $CHAIN_ROOT"
    [[ "$script" == main*.sh && -f "$script" ]] || _chain_die "--script $script: expected a main*.sh of $CHAIN_ROOT"
    if [[ -n "$once_text" ]]; then
        if ((restarts > 0)); then
            _chain_log "stage: run $((restarts + 1)) of this job (requeued): not passing${once_text} again, the stage resumes"
        else
            set -- "${once[@]:1}" "$@" # (once holds "--" first: never an empty array on bash 4.2)
        fi
    fi
    # srun (Slurm >= 22.05) no longer inherits --cpus-per-task from the job: pass it on explicitly
    if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
    _chain_stage_command "$script" "$@"
    if [[ -n "${SLURM_JOB_ID:-}" ]] && ((${SLURM_NTASKS:-1} > 1)); then _chain_rendezvous; fi
    _chain_log "stage: job ${SLURM_JOB_ID:-none} (restart $restarts) on $(hostname), ${SLURM_NTASKS:-1} task(s)"
    if [[ -n "$CHAIN_CONTAINER" ]]; then
        _chain_log "stage: in container $CHAIN_CONTAINER"
    else
        _chain_log "stage: no container at ${CONTAINER:-container.sif}: on this node's Python"
    fi
    _chain_log "stage: running: ${CHAIN_CMD[*]}"
    _chain_run_forwarding "${CHAIN_CMD[@]}"
    _chain_stage_end "$CHAIN_RC"
}

_chain_stage_end() { # exit code of the stage: say what happened, requeue a preempted job, exit with the code
    local rc="$1" saved=""
    if ((rc == CHAIN_EXIT_PREEMPTED)) && [[ -n "$CHAIN_STOP_SECONDS" ]]; then
        saved=" in $CHAIN_STOP_SECONDS s after SIG$CHAIN_SIGNAL"
    fi
    if ((rc == CHAIN_EXIT_PREEMPTED)) && ((CHAIN_GOT_TERM)); then
        _chain_log "stage: stopped by SIGTERM (exit $rc), state saved$saved; Slurm cancels, requeues or preempts the" \
            "job. To continue a cancelled stage, submit it again (--from-stage K): it resumes from its state"
    elif ((rc == CHAIN_EXIT_PREEMPTED)) && [[ -n "${SLURM_JOB_ID:-}" ]]; then
        _chain_log "stage: preempted (exit $rc), state saved$saved: requeueing job $SLURM_JOB_ID to continue where it stopped"
        # The requeue makes Slurm end this run of the job: SIGTERM to its processes (this shell and scontrol
        # included), SIGKILL after KillWait. Ignore TERM meanwhile, so that neither dies half-way and the shell
        # exits by itself; the job is requeued either way (Slurm ignores a requeued run's exit code) and starts
        # again after the credential lifetime (AuthInfo cred_expire, default 120 s), with SLURM_RESTART_COUNT+1.
        trap '' TERM
        if scontrol requeue "$SLURM_JOB_ID"; then
            _chain_log "stage: job $SLURM_JOB_ID requeued: it starts again from the saved state"
            exit 0
        fi
        trap - TERM
        _chain_log "stage: scontrol requeue failed: submit the same stage again to resume"
    elif ((rc == CHAIN_EXIT_PREEMPTED)); then
        _chain_log "stage: stopped (exit $rc), state saved$saved: run the same command again to resume"
    elif ((rc != 0)); then
        _chain_log "stage: failed with exit code $rc"
    else
        _chain_log "stage: done"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- submission mode
job_submit() { # jobscript-name args...: the Python chain, with the project's Python
    local jobscript="$1" python="${PYTHON:-}"
    shift
    if [[ -z "$python" ]]; then
        if [[ -x "$CHAIN_ROOT/.venv/bin/python" ]]; then python="$CHAIN_ROOT/.venv/bin/python"; else python=python3; fi
    fi
    "$python" -c 'import tomllib' 2>/dev/null ||
        _chain_die "$python: the chain needs Python >= 3.11 (tomllib): set PYTHON=... or create .venv (README)"
    PYTHONPATH="$CHAIN_ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m training.cluster.chain \
        --jobscript "$jobscript" "$@"
}

# ---------------------------------------------------------------- entry point
job_main() { # jobscript-name default-script "$@" (of the jobscript)
    local jobscript="$1" script="$2"
    shift 2
    if [[ "${1:-}" == "--stage" ]]; then
        shift
        job_stage "$script" "$@"
    elif [[ -n "${SLURM_JOB_ID:-}" && ($# -eq 0 || "${1:-}" == "--") ]]; then
        job_stage "$script" "$@"
    else
        job_submit "$jobscript" "$@"
    fi
}
