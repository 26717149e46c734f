# shellcheck shell=bash
# Curriculum chains on SLURM: the logic shared by jobscript_slurm.sh (teacher runs) and
# jobscript_slurm_distillation.sh (student runs). Sourced, not executed:
#
#     CHAIN_ROOT=/path/to/repo; source "$CHAIN_ROOT/training/cluster/slurm_chain.sh"; chain_main teacher "$@"
#
# Two modes:
#   submission  `bash jobscript_slurm.sh --run R [options] [-- extra train args]` submits stages 1-5 of run R as
#               five sbatch jobs chained with --dependency=afterok (or runs them here one after another: --local);
#   stage       what a job runs (`--stage` first, or no arguments under sbatch): one stage, told by the environment
#               (MAIN_SCRIPT, EXPERIMENT_ID, PROFILE, WEIGHT_DECAY, PREVIOUS_MODEL_PATH or
#               PREVIOUS_STUDENT_MODEL_PATH + TRAINED_TEACHER_MODEL_PATH) which main*.sh to run and how.
#
# The run registry (DESIGN.md): experiment id of run r, stage s = fastscnn-training-experiment-NN, NN = 5(r-1)+s;
# stage s > 1 starts from models/<id of stage s-1>.pth, stage 1 from none; odd runs weight decay 0, even 1e-4.

CHAIN_ID_PREFIX="fastscnn-training-experiment-"
CHAIN_EXIT_USAGE=2
CHAIN_EXIT_PREEMPTED=75   # the stages' "preempted, state saved, run again to resume" (training/errors.py)

_chain_log() { printf '[%s] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }
_chain_die() { printf 'error: %s\n' "$*" >&2; exit "$CHAIN_EXIT_USAGE"; }
_chain_quote() {  # args -> one line a shell reads back as the same words (quoted only where needed)
    local arg sep=""
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            printf '%s%s' "$sep" "$arg"
        else
            printf "%s'%s'" "$sep" "${arg//\'/\'\\\'\'}"
        fi
        sep=" "
    done
}

# ---------------------------------------------------------------- the registry
chain_experiment_id() {  # run stage
    printf '%s%02d' "$CHAIN_ID_PREFIX" "$((5 * ($1 - 1) + $2))"
}
chain_run_kind() {  # run -> teacher | student
    case "$1" in 1 | 2 | 5 | 6) echo teacher ;; 3 | 4 | 7 | 8) echo student ;; *) return 1 ;; esac
}
chain_run_script() {  # run -> main*.sh
    case "$1" in
        1 | 2) echo main.sh ;; 5 | 6) echo main_dice.sh ;;
        3 | 4) echo main_distillation.sh ;; 7 | 8) echo main_distillation_dice.sh ;;
        *) return 1 ;;
    esac
}
chain_run_weight_decay() {  # run -> 0 | 1e-4
    if (($1 % 2)); then echo 0; else echo 1e-4; fi
}
chain_run_teacher() {  # student run -> the teacher run's last model
    case "$1" in
        3) echo "models/$(chain_experiment_id 1 5).pth" ;; 4) echo "models/$(chain_experiment_id 2 5).pth" ;;
        7) echo "models/$(chain_experiment_id 5 5).pth" ;; 8) echo "models/$(chain_experiment_id 6 5).pth" ;;
        *) return 1 ;;
    esac
}
chain_runs_of_kind() {  # kind -> "1 2 5 6" | "3 4 7 8"
    if [[ "$1" == teacher ]]; then echo "1 2 5 6"; else echo "3 4 7 8"; fi
}
chain_scripts_of_kind() {
    if [[ "$1" == teacher ]]; then echo "main.sh main_dice.sh"; else echo "main_distillation.sh main_distillation_dice.sh"; fi
}

# ---------------------------------------------------------------- usage
chain_usage() {  # kind jobscript
    local kind="$1" me="$2" runs first_run example teacher_line=""
    runs="$(chain_runs_of_kind "$kind")"
    first_run="${runs%% *}"
    if [[ "$kind" == student ]]; then
        teacher_line="
  --teacher PATH     the trained teacher (default: the run's teacher, models/fastscnn-training-experiment-05.pth
                     for run 3, -10 for 4, -25 for 7, -30 for 8); it must exist (the teacher is not trained here)"
    fi
    example="bash $me --run $first_run -- --epochs 50 --data-dir /scratch/cityscapes"
    cat <<EOF
Usage: bash $me --run R [options] [-- extra arguments for every stage's training script]
       sbatch $me   (what each job runs: one stage, told by the environment)

Submits the five curriculum stages of run R ($runs) as five SLURM jobs chained with --dependency=afterok:
stage k trains at profile k and starts from stage k-1's models/<experiment id>.pth (stage 1 from random init).
Experiment id of run R, stage k: ${CHAIN_ID_PREFIX}NN with NN = 5(R-1)+k.

Options:
  --run R            the run to train:$(for r in $runs; do printf '\n                       %s: %s, weight decay %s, experiments %s-%s' "$r" "$(chain_run_script "$r")" "$(chain_run_weight_decay "$r")" "$(chain_experiment_id "$r" 1)" "$(printf %02d $((5 * r)))"; done)
  --from-stage K     start at stage K (1-5) from stage K-1's checkpoint, which must exist (default 1)
  --to-stage K       stop after stage K (default 5)$teacher_line
  --gpus N           GPUs per node: one task per GPU, the stage launched with srun (default 1)
  --nodes M          nodes per stage (default 1)
  --dry-run          print the sbatch commands (or, with --local, the stage commands); run nothing
  --local            run the stages here one after another without SLURM; stop at the first failing stage
                     and exit with its code
  -h, --help         this text
Arguments after -- go to every stage's Python script and override the defaults of main*.sh.
Other sbatch settings: SBATCH_* environment variables (e.g. SBATCH_TIMELIMIT=4:00:00, SBATCH_ACCOUNT=...).
Inside the job the stage runs in apptainer when the container exists (CONTAINER=path, default container.sif,
--env-file .env when .env exists), otherwise on the node's Python (\$PYTHON, .venv/bin/python or python3).
Preemption: 300 s before the time limit Slurm sends SIGUSR1 (by hand: scancel --batch --signal=USR1 JOBID); the
stage saves its state and exits 75, the job requeues itself and resumes where it stopped (its later stages wait).
A cancelled stage (scancel: SIGTERM) also saves its state: submit it again with --from-stage K to resume it.
Outputs: slurms/<experiment id>-<job id>.out (appended to across requeues).

Example: $example
Watch:   squeue -u "\$USER"; tail -f slurms/${CHAIN_ID_PREFIX}*.out
EOF
}

# ---------------------------------------------------------------- stage mode (inside a job)
# Signals. Slurm's warning before the time limit (--signal=B:USR1@300) and `scancel --batch --signal=USR1 <job>`
# reach only this shell: USR1 is forwarded to the stage, which saves its state and exits 75, and the job requeues
# itself. SIGTERM under Slurm (scancel, scontrol requeue, preemption, the time limit itself) is sent by Slurm to
# every process of the job, the stage included: forwarding it too would be the stage's "second signal, exit at once",
# and the job is then not requeued from here (a cancelled job stays cancelled; a requeue or preemption is Slurm's).
# Outside Slurm (--local, --stage) TERM reaches only this shell and is forwarded.
_chain_forward() {  # signal
    local sig="$1"
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

_chain_run_forwarding() {  # command...: run it in the background, forward USR1/TERM to it; its status in CHAIN_RC
    CHAIN_CHILD=""
    CHAIN_GOT_TERM=0
    CHAIN_FORWARDED=0
    trap '_chain_forward USR1' USR1
    trap '_chain_forward TERM' TERM
    # (a script's background commands ignore SIGINT: give the stage back its Ctrl-C)
    (trap - INT QUIT; exec "$@") &
    CHAIN_CHILD=$!
    while :; do
        CHAIN_RC=0
        wait "$CHAIN_CHILD" || CHAIN_RC=$?
        # a trapped signal interrupts `wait` (status > 128) while the stage is still finishing its step
        if ((CHAIN_RC > 128)) && kill -0 "$CHAIN_CHILD" 2>/dev/null; then continue; fi
        break
    done
    trap '' USR1  # a late warning signal must not kill this shell while it requeues the job
    trap - TERM
    CHAIN_CHILD=""
}

chain_stage() {  # kind [--] args for the training script
    local kind="$1" script allowed container ntasks rc=0
    shift
    if [[ "${1:-}" == "--" ]]; then shift; fi
    cd "$CHAIN_ROOT" || _chain_die "cannot enter the repository $CHAIN_ROOT"
    if [[ "$kind" == teacher ]]; then script="${MAIN_SCRIPT:-main.sh}"; else script="${MAIN_SCRIPT:-main_distillation.sh}"; fi
    allowed="$(chain_scripts_of_kind "$kind")"
    if [[ " $allowed " != *" $script "* ]]; then
        _chain_die "MAIN_SCRIPT=$script is not a $kind stage script (expected one of: $allowed)"
    fi
    [[ -f "$script" ]] || _chain_die "$CHAIN_ROOT/$script not found"

    ntasks="${SLURM_NTASKS:-1}"
    # srun (Slurm >= 22.05) no longer inherits --cpus-per-task from the job: pass it on explicitly
    if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
    container="${CONTAINER:-container.sif}"
    local -a cmd
    if [[ -f "$container" ]]; then
        # the container's own Python, not a host venv that PYTHON or .venv/ may name
        cmd=(apptainer exec --nv --env "PYTHON=${CONTAINER_PYTHON:-python3}")
        if [[ -f .env ]]; then cmd+=(--env-file .env); fi
        cmd+=("$container" bash "$script" "$@")
        if [[ -n "${SLURM_JOB_ID:-}" ]]; then cmd=(srun --kill-on-bad-exit=1 "${cmd[@]}"); fi
    else
        cmd=(bash "$script" "$@")
        if [[ -n "${SLURM_JOB_ID:-}" ]] && ((ntasks > 1)); then cmd=(srun --kill-on-bad-exit=1 "${cmd[@]}"); fi
    fi
    # (--kill-on-bad-exit: a task that dies ends the whole step, the other ranks do not wait for it in a collective)
    if [[ -n "${SLURM_JOB_ID:-}" ]] && ((ntasks > 1)); then
        # the rendezvous of the ranks, from here, where scontrol exists (a container may not have it)
        if [[ -z "${MASTER_ADDR:-}" ]]; then
            MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1 || true)"
            [[ -n "$MASTER_ADDR" ]] || MASTER_ADDR="$(hostname)"
            export MASTER_ADDR
        fi
        export MASTER_PORT="${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 10000))}"
        _chain_log "stage: rendezvous of the ${ntasks} tasks at $MASTER_ADDR:$MASTER_PORT"
    fi

    _chain_log "stage: job ${SLURM_JOB_ID:-none} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname), ${ntasks} task(s)"
    _chain_log "stage: EXPERIMENT_ID=${EXPERIMENT_ID:-<main default>} PROFILE=${PROFILE:-<main default>} WEIGHT_DECAY=${WEIGHT_DECAY:-<main default>}"
    if [[ "$kind" == teacher ]]; then
        _chain_log "stage: PREVIOUS_MODEL_PATH=${PREVIOUS_MODEL_PATH:-<main default>}"
    else
        _chain_log "stage: PREVIOUS_STUDENT_MODEL_PATH=${PREVIOUS_STUDENT_MODEL_PATH:-<main default>} TRAINED_TEACHER_MODEL_PATH=${TRAINED_TEACHER_MODEL_PATH:-<main default>}"
    fi
    if [[ -f "$container" ]]; then _chain_log "stage: in container $container"; else _chain_log "stage: no container at $container: on this node's Python"; fi
    _chain_log "stage: running: ${cmd[*]}"

    _chain_run_forwarding "${cmd[@]}"
    rc="$CHAIN_RC"

    if ((rc == CHAIN_EXIT_PREEMPTED)); then
        if ((CHAIN_GOT_TERM)); then
            _chain_log "stage: stopped by SIGTERM (exit $rc), state saved; Slurm cancels, requeues or preempts the job." \
                "To continue a cancelled stage, submit it again (--from-stage K): it resumes from its state"
        elif [[ -n "${SLURM_JOB_ID:-}" ]]; then
            _chain_log "stage: preempted (exit $rc), state saved: requeueing job $SLURM_JOB_ID to continue where it stopped"
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
        else
            _chain_log "stage: preempted (exit $rc), state saved: run the same command again to resume"
        fi
    elif ((rc != 0)); then
        _chain_log "stage: failed with exit code $rc"
    else
        _chain_log "stage: done"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- submission mode
_chain_posint() {  # name value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || _chain_die "$1 must be a positive integer, got '$2'"
}

chain_submit() {  # kind jobscript-name args...
    local kind="$1" me="$2"
    shift 2
    local run="" from=1 to=5 dry=0 local_mode=0 gpus=1 nodes=1 teacher="" opt value
    local -a extra=()
    while (($#)); do
        opt="$1"
        case "$opt" in
            --run=* | --from-stage=* | --to-stage=* | --gpus=* | --nodes=* | --teacher=*)
                value="${opt#*=}"; opt="${opt%%=*}"; shift; set -- "$opt" "$value" "$@" ;;
        esac
        case "$1" in
            -h | --help) chain_usage "$kind" "$me"; exit 0 ;;
            --run | --from-stage | --to-stage | --gpus | --nodes | --teacher)
                (($# >= 2)) || _chain_die "$1 needs a value (see --help)"
                case "$1" in
                    --run) run="$2" ;; --from-stage) from="$2" ;; --to-stage) to="$2" ;;
                    --gpus) gpus="$2" ;; --nodes) nodes="$2" ;;
                    --teacher)
                        [[ "$kind" == student ]] || _chain_die "--teacher is for student runs (jobscript_slurm_distillation.sh)"
                        teacher="$2" ;;
                esac
                shift 2 ;;
            --dry-run) dry=1; shift ;;
            --local) local_mode=1; shift ;;
            --) shift; extra=("$@"); break ;;
            *) _chain_die "unknown option '$1' (see: bash $me --help)" ;;
        esac
    done

    # ---- validation: one clear line, exit 2
    [[ -n "$run" ]] || _chain_die "--run R is required (R in: $(chain_runs_of_kind "$kind")); see: bash $me --help"
    local run_kind
    run_kind="$(chain_run_kind "$run" 2>/dev/null)" || _chain_die "unknown run '$run': runs are 1-8 (this script: $(chain_runs_of_kind "$kind"))"
    if [[ "$run_kind" != "$kind" ]]; then
        if [[ "$run_kind" == teacher ]]; then
            _chain_die "run $run is a teacher run: submit it with jobscript_slurm.sh --run $run (this script: student runs $(chain_runs_of_kind "$kind"))"
        else
            _chain_die "run $run is a student (distillation) run: submit it with jobscript_slurm_distillation.sh --run $run (this script: teacher runs $(chain_runs_of_kind "$kind"))"
        fi
    fi
    [[ "$from" =~ ^[1-5]$ ]] || _chain_die "--from-stage must be a stage 1-5, got '$from'"
    [[ "$to" =~ ^[1-5]$ ]] || _chain_die "--to-stage must be a stage 1-5, got '$to'"
    ((from <= to)) || _chain_die "--from-stage $from is after --to-stage $to"
    _chain_posint --gpus "$gpus"
    _chain_posint --nodes "$nodes"
    if ((local_mode)) && ((gpus * nodes > 1)); then
        _chain_die "--local runs one process per stage: for several GPUs on this machine use torchrun (docs/training.md), for several nodes submit without --local"
    fi
    # the stage variables travel as one --export list (split at commas) and as words (split at white space)
    [[ "$CHAIN_ROOT" != *[,[:space:]]* ]] ||
        _chain_die "the repository path '$CHAIN_ROOT' contains a comma or white space, which the job's variables cannot carry (expected a path without them: move or link the repository)"

    local script weight_decay previous="none"
    script="$(chain_run_script "$run")"
    weight_decay="$(chain_run_weight_decay "$run")"
    [[ -f "$CHAIN_ROOT/$script" ]] || _chain_die "$CHAIN_ROOT/$script not found"
    if [[ "$kind" == student ]]; then
        if [[ -z "$teacher" ]]; then
            teacher="$(chain_run_teacher "$run")"
        elif [[ "$teacher" != /* ]]; then
            teacher="$PWD/$teacher"  # the jobs run in the repository: make a path given from elsewhere absolute
        fi
        [[ "$teacher" != *[,[:space:]]* ]] ||
            _chain_die "teacher path '$teacher' contains a comma or white space, which the job's variables cannot carry (expected a path without them: copy or link the file)"
        if ((!dry)) && [[ ! -f "$(cd "$CHAIN_ROOT" && realpath -m -- "$teacher")" ]]; then
            _chain_die "teacher checkpoint $teacher not found (run $run distils from it; train its teacher run first or pass --teacher PATH)"
        fi
    fi
    if ((from > 1)); then
        previous="models/$(chain_experiment_id "$run" $((from - 1))).pth"
        if ((!dry)) && [[ ! -f "$CHAIN_ROOT/$previous" ]]; then
            _chain_die "previous checkpoint $previous not found (--from-stage $from starts from stage $((from - 1))'s model)"
        fi
    fi

    # ---- the stages
    local stage id exports envs
    local -a stage_ids=() stage_envs=()
    for ((stage = from; stage <= to; stage++)); do
        id="$(chain_experiment_id "$run" "$stage")"
        envs="MAIN_SCRIPT=$script EXPERIMENT_ID=$id PROFILE=$stage WEIGHT_DECAY=$weight_decay"
        if [[ "$kind" == teacher ]]; then
            envs+=" PREVIOUS_MODEL_PATH=$previous"
        else
            envs+=" PREVIOUS_STUDENT_MODEL_PATH=$previous TRAINED_TEACHER_MODEL_PATH=$teacher"
        fi
        stage_ids+=("$id")
        stage_envs+=("$envs")
        previous="models/$id.pth"
    done

    local what="run $run ($kind, $script, weight decay $weight_decay${teacher:+, teacher $teacher}): stages $from-$to"
    if ((local_mode)); then
        _chain_local "$me" "$dry" "$what" "$from" "${#stage_ids[@]}" "${stage_ids[@]}" "${stage_envs[@]}" -- "${extra[@]}"
        return
    fi

    local -a sbatch_opts=()
    if ((gpus * nodes > 1)); then
        sbatch_opts+=(--nodes="$nodes" --ntasks="$((gpus * nodes))" --ntasks-per-node="$gpus"
            --gpus="$((gpus * nodes))" --gpus-per-node="$gpus")
    fi
    local -a job_ids=() cmd
    local i job previous_job="" output
    if ((dry)); then
        _chain_log "dry run, nothing submitted: $what"
    else
        mkdir -p "$CHAIN_ROOT/slurms"
        command -v sbatch >/dev/null || _chain_die "sbatch not found: run on a SLURM login node, or use --local"
        _chain_log "submitting $what"
    fi
    for i in "${!stage_ids[@]}"; do
        id="${stage_ids[$i]}"
        stage=$((from + i))
        exports="ALL,FASTSCNN_ROOT=$CHAIN_ROOT,${stage_envs[$i]// /,}"
        cmd=("${sbatch_opts[@]}" --job-name="$id" --chdir="$CHAIN_ROOT" --export="$exports" "$CHAIN_ROOT/$me" --stage --
            "${extra[@]}")
        if ((dry)); then
            local dep=""
            ((i == 0)) || dep=" --dependency=afterok:\"\$job$((stage - 1))\" --kill-on-invalid-dep=yes"
            # shellcheck disable=SC2016  # the $( ) is printed for the user's shell
            printf 'job%s=$(sbatch --parsable%s %s)\n' "$stage" "$dep" "$(_chain_quote "${cmd[@]}")"
            continue
        fi
        # --kill-on-invalid-dep: a failed stage cancels the rest of the chain on any cluster (by default Slurm
        # leaves them PENDING with DependencyNeverSatisfied for ever; kill_invalid_depend is a cluster option)
        if [[ -n "$previous_job" ]]; then
            cmd=(--dependency="afterok:$previous_job" --kill-on-invalid-dep=yes "${cmd[@]}")
        fi
        printf '+ sbatch --parsable %s\n' "$(_chain_quote "${cmd[@]}")"
        if ! job="$(sbatch --parsable "${cmd[@]}")"; then
            printf 'error: sbatch failed for stage %s (%s)' "$stage" "$id" >&2
            if ((${#job_ids[@]})); then
                printf '; cancelling the jobs submitted by this command: %s' "${job_ids[*]}" >&2
                scancel "${job_ids[@]}" || true
            fi
            printf '\n' >&2
            exit 1
        fi
        job="${job%%;*}"
        job_ids+=("$job")
        previous_job="$job"
        output="$CHAIN_ROOT/slurms/$id-$job.out"
        printf 'stage %s: job %s  %s  profile %s  %s\n' "$stage" "$job" "$id" "$stage" "$output"
    done
    if ((!dry)); then
        local joined="${job_ids[*]}"
        _chain_log "submitted ${#job_ids[@]} job(s) chained with afterok: ${joined// /,}"
        echo "watch: squeue -j ${joined// /,}    tail -f $CHAIN_ROOT/slurms/<experiment id>-<job id>.out"
    fi
}

_chain_local() {  # jobscript dry what first-stage n ids... envs... -- extra...: each stage via the stage mode
    local me="$1" dry="$2" what="$3" from_stage="$4" n="$5"
    shift 5
    local -a ids=("${@:1:n}") envs=("${@:n+1:n}")
    shift $((2 * n))
    if [[ "${1:-}" == "--" ]]; then shift; fi
    local i rc id
    local -a assignments
    cd "$CHAIN_ROOT" || _chain_die "cannot enter the repository $CHAIN_ROOT"
    if ((dry)); then
        _chain_log "dry run, nothing run: here, one stage after another: $what"
    else
        _chain_log "running here, one stage after another: $what"
    fi
    for i in "${!ids[@]}"; do
        id="${ids[$i]}"
        read -r -a assignments <<<"FASTSCNN_ROOT=$CHAIN_ROOT ${envs[$i]}"
        if ((dry)); then
            printf 'env %s\n' "$(_chain_quote "${assignments[@]}" bash "$CHAIN_ROOT/$me" --stage -- "$@")"
            continue
        fi
        _chain_log "local: stage $((i + 1)) of $n: ${envs[$i]}"
        _chain_run_forwarding env "${assignments[@]}" bash "$CHAIN_ROOT/$me" --stage -- "$@"
        rc="$CHAIN_RC"
        if ((rc == CHAIN_EXIT_PREEMPTED)); then
            _chain_log "local: $id stopped by a signal with its state saved (exit $rc); the later stages were not run." \
                "To continue: the same command with --from-stage $((from_stage + i))"
            exit "$rc"
        elif ((rc != 0)); then
            _chain_log "local: $id failed with exit code $rc; the later stages were not run"
            exit "$rc"
        fi
    done
    if ((!dry)); then _chain_log "local: all $n stage(s) done"; fi
}

# ---------------------------------------------------------------- entry point
chain_main() {  # kind "$@" (of the jobscript)
    local kind="$1" me
    shift
    me="${CHAIN_JOBSCRIPT:-jobscript_slurm.sh}"
    if [[ "${1:-}" == "--stage" ]]; then
        shift
        chain_stage "$kind" "$@"
    elif [[ -n "${SLURM_JOB_ID:-}" && ($# -eq 0 || "${1:-}" == "--") ]]; then
        chain_stage "$kind" "$@"
    elif (($# == 0)); then
        chain_usage "$kind" "$me" >&2
        exit "$CHAIN_EXIT_USAGE"
    else
        chain_submit "$kind" "$me" "$@"
    fi
}
