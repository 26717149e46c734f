"""Submit a run's curriculum as a chain of SLURM jobs (or run it here, --local): what `bash jobscript_slurm*.sh --run N`
calls. The stages come from the run file (runs/NN.toml, see training/cluster/runs.py); each stage's job runs the
jobscript in stage mode (training/cluster/stage_job.sh: signal forwarding, requeue), which runs the main*.sh with the
stage's flags, resolved here, each printed once:

    python -m training.cluster.chain --jobscript jobscript_slurm.sh --run 1 [--from-stage K] [--to-stage K]
        [--gpus N] [--nodes M] [--dry-run] [--local] [-- flags for every stage]

Precedence, one rule for every value: the flags after -- > the stage's entry > the run's `flags` > the recipe >
the script's defaults. One-shot flags (--restart) act once: only the first stage's job gets them, and the job passes
them on its first run only (never after a requeue).

Test hook: FASTSCNN_TEST_CHAIN_NO_IMPORT=1 leaves the training script unimported, as on a login node without torch
(the flags are then checked by name only, and by the stage when it starts).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.cluster import runs as registry
from training.errors import EXIT_PREEMPTED, UserError, run_cli

JOBSCRIPTS = {"jobscript_slurm.sh": False, "jobscript_slurm_distillation.sh": True}  # name -> for student runs
# the destinations of the flags that name one stage (without the script's parser: the flag's name as argparse's)
IDENTITY = {"experiment_id", "profile", "init_from", "run", "stage"}
IDENTITY |= {"previous_model_path", "model_path", "previous_student_model_path"}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%Y-%m-%d %H:%M:%S}] {message}", flush=True)


# ------------------------------------------------------------------------------------------ the script's flags
class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def script_parser(script: Path) -> tuple[argparse.ArgumentParser | None, str]:
    """The training script's own parser, as its main() builds it, or (None, why) where the script cannot be imported
    here (no torch on a login node, say): the stage then checks its flags when it starts."""
    spec = importlib.util.spec_from_file_location(f"_chain_{script.stem}", script)
    try:
        if os.environ.get("FASTSCNN_TEST_CHAIN_NO_IMPORT"):  # test hook: the path of a login node without torch
            raise ImportError("FASTSCNN_TEST_CHAIN_NO_IMPORT is set")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        return None, f"note: flags not checked here ({script.name}: {error}); the stage checks them when it starts"

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = capture
    try:
        module.main([])
    except _Captured as captured:
        return captured.parser, ""
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise RuntimeError(f"{script}: main() built no argument parser")


def _raising(parser: argparse.ArgumentParser, where: str) -> argparse.ArgumentParser:
    def error(message):
        raise UserError(f"{where}: {message}")

    parser.error = error
    return parser


class Flags:
    """What the chain needs to know of a script's flags: their names, aliases and the ones a user gave."""

    def __init__(self, parser: argparse.ArgumentParser | None, script: str):
        self.parser, self.script = parser, script

    def dest(self, word: str) -> str:
        """The destination of a flag word (`--model-path` -> init_from; without the parser: model_path)."""
        name = word.split("=", 1)[0]
        action = self.parser._option_string_actions.get(name) if self.parser is not None else None
        return action.dest if action else name[2:].replace("-", "_")

    def check_name(self, where: str, name: str) -> None:
        if self.parser is None or f"--{name}" in self.parser._option_string_actions:
            return
        known = [o[2:] for o in self.parser._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (see: python {self.script} --help)"
        raise UserError(f"{where}: '{name}' is not a flag of {self.script}{hint}")

    def given(self, extra: list[str]) -> dict[str, list[str]]:
        """The flags of `extra` by destination, each with its words (the user's order kept)."""
        if self.parser is None:
            return self._given_by_words(extra)
        probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        for action in self.parser._actions:
            if action.option_strings and action.dest != "help":
                kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
                kwargs["action"] = "store_true" if action.nargs == 0 else "store"
                probe.add_argument(*action.option_strings, **kwargs)
        _raising(probe, f"-- {' '.join(extra)}")
        namespace, unknown = probe.parse_known_args(extra)
        if unknown:
            raise UserError(f"-- {unknown[0]}: not a flag of {self.script} (see: python {self.script} --help)")
        by_dest: dict[str, list[str]] = {dest: [] for dest in vars(namespace)}
        current = None
        for word in extra:
            if word.startswith("--"):
                current = self.dest(word)
            if current in by_dest:
                by_dest[current].append(word)
        return by_dest

    def _given_by_words(self, extra: list[str]) -> dict[str, list[str]]:
        by_dest: dict[str, list[str]] = {}
        current = None
        for word in extra:
            if word.startswith("--"):
                current = self.dest(word)
            if current is not None:
                by_dest.setdefault(current, []).append(word)
        return by_dest

    def validate(self, where: str, argv: list[str], world_size: int) -> list[str]:
        """Parse and check a stage's command line as the stage will; returns the warnings it gives."""
        if self.parser is None:
            return []
        from training.engine.cli import check_args
        from training.engine.recipes import resolve_recipe

        args = _raising(self.parser, where).parse_args(argv)
        resolve_recipe(args, world_size)
        warnings: list[str] = []
        try:
            check_args(args, warn=warnings.append)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        return warnings


# ------------------------------------------------------------------------------------------ the stages
@dataclass
class StageJob:
    number: int
    experiment_id: str
    profile: str
    flags: list[str]  # the stage's flags for the training script, each once
    once: list[str]  # one-shot flags: the first run of this stage's job only
    teacher: str | None = None  # a student's teacher model


def plan_stages(run: registry.Run, first: int, last: int, teacher: str | None, extra: list[str], flags: Flags):
    """The stages first..last of `run` with their command lines (the precedence rule applied)."""
    given = flags.given(extra)
    once_dests = {dest for dest in given if dest in registry.ONE_SHOT}
    if last > first:
        for dest in given:
            if dest in IDENTITY:
                word = given[dest][0].split("=", 1)[0]
                raise UserError(
                    f"-- {word}: names one stage, but this chain has stages {first}-{last} (expected it in "
                    f"{run.where}'s stage entries, or one stage: --from-stage K --to-stage K)"
                )
    if "trained_teacher_model_path" in given:
        raise UserError(f"-- {registry.TEACHER_FLAG}: the chain's teacher is set by --teacher PATH")
    once = [word for dest in once_dests for word in given[dest]]
    user = [word for word in extra if word not in once]
    models = models_folder(run, given)
    jobs = []
    for number in range(first, last + 1):
        stage_flags = run.stage_flags(number, teacher, models)
        for name in stage_flags:
            if name not in ("run", "stage"):
                flags.check_name(f"{run.where}: stage {number}", name)
        kept = {name: value for name, value in stage_flags.items() if flags.dest(f"--{name}") not in given}
        jobs.append(
            StageJob(
                number,
                str(stage_flags["experiment-id"]),
                registry.format_value(stage_flags["profile"]),
                registry.flag_words(kept) + user,
                once if number == first else [],
                stage_flags.get(registry.TEACHER_FLAG[2:]),
            )
        )
    return jobs


def models_folder(run: registry.Run, given: dict[str, list[str]]) -> str:
    """Where the stages write their models: models/, or <output dir>/models with --output-dir (after --, or in the
    run's flags), so that a stage starts from the previous stage's model there."""
    words = given.get("output_dir")
    if words:
        output_dir = words[-1].split("=", 1)[1] if "=" in words[-1] else words[-1]
    else:
        output_dir = str(run.flags.get("output-dir", "."))
    return "models" if output_dir in (".", "./", "") else f"{output_dir.rstrip('/')}/models"


def job_arguments(root: Path, jobscript: str, main: str, job: StageJob) -> list[str]:
    """What the job runs: the jobscript in stage mode, the main*.sh, the one-shot flags and the stage's flags."""
    once = [word for flag in job.once for word in ("--once", flag)]
    return [str(root / jobscript), "--stage", "--script", main, *once, "--", *job.flags]


def quote(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


# ------------------------------------------------------------------------------------------ submission
def submit(options, run: registry.Run, jobs: list[StageJob], what: str) -> None:
    root, main = options.root, run.kind.main
    sbatch_options = []
    if options.gpus * options.nodes > 1:
        tasks = options.gpus * options.nodes
        sbatch_options = [f"--nodes={options.nodes}", f"--ntasks={tasks}", f"--ntasks-per-node={options.gpus}"]
        sbatch_options += [f"--gpus={tasks}", f"--gpus-per-node={options.gpus}"]
    if options.dry_run:
        log(f"dry run, nothing submitted: {what}")
    else:
        if shutil.which("sbatch") is None:
            raise UserError("sbatch not found: run on a SLURM login node, or use --local")
        (root / "slurms").mkdir(exist_ok=True)
        log(f"submitting {what}")
    submitted: list[str] = []
    for job in jobs:
        argv = [*sbatch_options, f"--job-name={job.experiment_id}", f"--chdir={root}"]
        argv += [f"--export=ALL,FASTSCNN_ROOT={root}", *job_arguments(root, options.jobscript, main, job)]
        if options.dry_run:
            dependency = (
                f' --dependency=afterok:"$job{job.number - 1}" --kill-on-invalid-dep=yes' if job is not jobs[0] else ""
            )
            print(f"job{job.number}=$(sbatch --parsable{dependency} {quote(argv)})")
            continue
        # --kill-on-invalid-dep: a failed stage cancels the rest of the chain on any cluster (by default Slurm
        # leaves them PENDING with DependencyNeverSatisfied for ever; kill_invalid_depend is a cluster option)
        if submitted:
            argv = [f"--dependency=afterok:{submitted[-1]}", "--kill-on-invalid-dep=yes", *argv]
        print(f"+ sbatch --parsable {quote(argv)}", flush=True)
        submitted.append(_sbatch(argv, job, submitted))
        output = root / "slurms" / f"{job.experiment_id}-{submitted[-1]}.out"
        print(f"stage {job.number}: job {submitted[-1]}  {job.experiment_id}  profile {job.profile}  {output}")
    if submitted:
        joined = ",".join(submitted)
        log(f"submitted {len(submitted)} job(s) chained with afterok: {joined}")
        print(f"watch: squeue -j {joined}    tail -f {root}/slurms/<experiment id>-<job id>.out")


def _sbatch(argv: list[str], job: StageJob, submitted: list[str]) -> str:
    result = subprocess.run(["sbatch", "--parsable", *argv], stdout=subprocess.PIPE, text=True)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip().split(";")[0]
    message = f"error: sbatch failed for stage {job.number} ({job.experiment_id})"
    if submitted:
        message += f"; cancelling the jobs submitted by this command: {' '.join(submitted)}"
        subprocess.run(["scancel", *submitted])
    print(message, file=sys.stderr)
    sys.exit(1)


def run_local(options, run: registry.Run, jobs: list[StageJob], what: str) -> int:
    """The stages here, one after another, each through the jobscript's stage mode; the first failure stops."""
    root = options.root
    env = dict(os.environ, FASTSCNN_ROOT=str(root))
    log(
        f"dry run, nothing run: here, one stage after another: {what}"
        if options.dry_run
        else f"running here, one stage after another: {what}"
    )
    for job in jobs:
        argv = ["bash", *job_arguments(root, options.jobscript, run.kind.main, job)]
        if options.dry_run:
            print(quote(argv))
            continue
        log(f"local: stage {job.number} of run {run.name or run.number}: {job.experiment_id}, profile {job.profile}")
        code = run_forwarding(argv, env, root)
        if code == EXIT_PREEMPTED:
            log(
                f"local: {job.experiment_id} stopped by a signal with its state saved (exit {code}); the later stages "
                f"were not run. To continue: the same command with --from-stage {job.number}"
            )
            return code
        if code != 0:
            log(f"local: {job.experiment_id} failed with exit code {code}; the later stages were not run")
            return code
    if not options.dry_run:
        log(f"local: all {len(jobs)} stage(s) done")
    return 0


def run_forwarding(argv: list[str], env: dict, cwd: Path) -> int:
    """Run a stage; pass the first SIGTERM/SIGUSR1 on to it (a second would make it exit without saving)."""
    child = subprocess.Popen(argv, env=env, cwd=cwd)
    forwarded = []

    def forward(signum, _frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # Ctrl-C reaches the stage itself (same process group)
            return
        if forwarded:
            log(f"got {name} again: the stage is already saving and stopping (not forwarded)")
            return
        forwarded.append(signum)
        log(f"got {name}: forwarding it to the stage (pid {child.pid}), which saves its state and stops")
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


# ------------------------------------------------------------------------------------------ the command line
def usage(jobscript: str, runs: dict[int, registry.Run]) -> str:
    student = JOBSCRIPTS[jobscript]
    mine = [run for run in runs.values() if run.kind.student == student]
    listing = "".join(
        f"\n                       {run.number}: {run.script} ({run.kind.main}), {run.description or run.label()}, "
        f"experiments {run.experiment_id(1)}..{run.experiment_id(len(run.stages))[-2:]}"
        for run in mine
    )
    teacher = (
        "\n  --teacher PATH     the trained teacher (default: the teacher run's last model, e.g. "
        f"{mine[0].teacher_model() if mine else 'models/<id>.pth'});\n                     it must exist (the "
        "teacher is not trained here)"
        if student
        else ""
    )
    first = mine[0].number if mine else 1
    return f"""Usage: bash {jobscript} --run R [options] [-- flags for every stage's training script]
       sbatch {jobscript}   (what each job runs: one stage, see training/cluster/stage_job.sh)

Submits the stages of run R, declared in runs/NN.toml (one file per run), as SLURM jobs chained with
--dependency=afterok: stage k starts from stage k-1's models/<experiment id>.pth (stage 1 from random init).
Experiment id of run R, stage k: {registry.ID_PREFIX}NN with NN = 5(R-1)+k.

Options:
  --run R            the run to train:{listing}
  --from-stage K     start at stage K from stage K-1's model, which must exist (default 1)
  --to-stage K       stop after stage K (default: the run's last){teacher}
  --gpus N           GPUs per node: one task per GPU, the stage launched with srun (default 1)
  --nodes M          nodes per stage (default 1)
  --dry-run          print the sbatch commands (or, with --local, the stage commands); run nothing
  --local            run the stages here one after another without SLURM; stop at the first failing stage
                     and exit with its code
  -h, --help         this text
Flags after -- go to every stage's training script. Which value wins, for every setting: the flags after --, then
the run file's stage entry, then its run-wide `flags`, then the recipe (--recipe), then the script's defaults.
.env holds the environment only (W&B key and mode, PYTHON, ...), never a stage's settings.
One-shot flags (--restart) act once: on the first stage, on its job's first run (never after a requeue).
Other sbatch settings: SBATCH_* environment variables (e.g. SBATCH_TIMELIMIT=4:00:00, SBATCH_ACCOUNT=...).
Preemption: 300 s before the time limit Slurm sends SIGUSR1 (by hand: scancel --batch --signal=USR1 JOBID); the
stage saves its state and exits 75, the job requeues itself and resumes where it stopped (its later stages wait).
A cancelled stage (scancel: SIGTERM) saves its state too: submit it again with --from-stage K to resume it.
Outputs: slurms/<experiment id>-<job id>.out (appended to across requeues).

Example: bash {jobscript} --run {first} -- --epochs 50 --data-dir /scratch/cityscapes
Watch:   squeue -u "$USER"; tail -f slurms/{registry.ID_PREFIX}*.out"""


def parse_options(argv: list[str]):
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--jobscript", choices=tuple(JOBSCRIPTS), required=True)
    parser.add_argument("-h", "--help", action="store_true")
    for name in ("--run", "--from-stage", "--to-stage", "--gpus", "--nodes", "--teacher"):
        parser.add_argument(name)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--local", action="store_true")

    def error(message):
        flag = message.split(":")[0].replace("argument ", "")
        raise UserError(f"{flag} needs a value (see --help)" if "expected one argument" in message else message)

    parser.error = error
    options, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}' (see: bash {options.jobscript} --help)")
    options.extra = extra
    options.root = registry.REPO
    return options


def _positive(name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{name} must be a positive integer, got '{value}'")
    return int(value)


def choose_run(options, runs: dict[int, registry.Run]) -> registry.Run:
    student = JOBSCRIPTS[options.jobscript]
    mine = " ".join(str(n) for n, run in runs.items() if run.kind.student == student)
    if options.run is None:
        raise UserError(f"--run R is required (R in: {mine}); see: bash {options.jobscript} --help")
    number = int(options.run) if options.run.isdigit() else None
    if number not in runs:
        missing = f"no runs/{number:02d}.toml" if number is not None else "expected a run number"
        raise UserError(
            f"unknown run '{options.run}': {missing} (runs: {', '.join(map(str, runs))}; this script: {mine})"
        )
    run = runs[number]
    if run.kind.student != student:
        other = next(name for name, is_student in JOBSCRIPTS.items() if is_student == run.kind.student)
        kind = "student (distillation)" if run.kind.student else "teacher"
        raise UserError(
            f"run {number} is a {kind} run: submit it with {other} --run {number} (this script: "
            f"{'student' if student else 'teacher'} runs {mine})"
        )
    if options.teacher is not None and not student:
        raise UserError("--teacher is for student runs (jobscript_slurm_distillation.sh)")
    return run


def choose_stages(options, run: registry.Run) -> tuple[int, int]:
    count = len(run.stages)
    bounds = []
    for name, value, default in (("--from-stage", options.from_stage, 1), ("--to-stage", options.to_stage, count)):
        value = str(default) if value is None else value
        if not value.isdigit() or not 1 <= int(value) <= count:
            raise UserError(f"{name} must be a stage 1-{count}, got '{value}'")
        bounds.append(int(value))
    first, last = bounds
    if first > last:
        raise UserError(f"--from-stage {first} is after --to-stage {last}")
    return first, last


def check_inputs(options, run: registry.Run, first: int) -> str | None:
    """The teacher's path (absolute where the user gave a relative one), after checking what must exist."""
    root = options.root
    if not options.local and "," in str(root):
        raise UserError(
            f"the repository path '{root}' contains a comma, which sbatch --export cannot carry (expected a path "
            f"without one: move or link the repository)"
        )
    if options.local and options.gpus * options.nodes > 1:
        raise UserError(
            "--local runs one process per stage: for several GPUs on this machine use torchrun (docs/training.md), for "
            "several nodes submit without --local"
        )
    teacher = options.teacher
    if teacher is not None and not os.path.isabs(teacher):
        teacher = os.path.abspath(teacher)  # the jobs run in the repository: a path given from elsewhere
    models = models_folder(run, Flags(None, run.script).given(options.extra))
    if run.kind.student and not options.dry_run:
        path = teacher or run.teacher_model(models)
        if not (root / path).is_file():
            raise UserError(
                f"teacher checkpoint {path} not found (run {run.number} distils from it; train its teacher run "
                f"first or pass --teacher PATH)"
            )
    previous = run.previous_model(first, models)
    if first > 1 and not options.dry_run and not (root / previous).is_file():
        raise UserError(
            f"previous checkpoint {previous} not found (--from-stage {first} starts from stage {first - 1}'s model)"
        )
    return teacher


def main(argv: list[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    runs = registry.load_registry(options.root / "runs")
    if options.help or not (argv if argv is not None else sys.argv[1:])[2:]:  # (no option but --jobscript NAME)
        print(usage(options.jobscript, runs), file=sys.stdout if options.help else sys.stderr)
        return 0 if options.help else 2
    run = choose_run(options, runs)
    first, last = choose_stages(options, run)
    options.gpus = _positive("--gpus", options.gpus or "1")
    options.nodes = _positive("--nodes", options.nodes or "1")
    teacher = check_inputs(options, run, first)
    parser, note = script_parser(options.root / run.script)
    flags = Flags(parser, run.script)
    jobs = plan_stages(run, first, last, teacher, options.extra, flags)
    warnings: list[str] = []
    for job in jobs:
        for warning in flags.validate(
            f"stage {job.number} ({job.experiment_id})", job.flags, options.gpus * options.nodes
        ):
            if warning not in warnings:
                warnings.append(warning)
    for line in [note] * bool(note) + [f"warning: {warning}" for warning in warnings]:
        print(line, file=sys.stderr)
    what = f"run {run.number} ({run.script} via {run.kind.main}"
    what += f", teacher {jobs[0].teacher}" if run.kind.student else ""
    what += f"): stages {first}-{last}"
    if options.local:
        return run_local(options, run, jobs, what)
    submit(options, run, jobs, what)
    return 0


def _cli(argv: list[str] | None) -> None:
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_cli(_cli)
