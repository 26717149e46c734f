"""The registry of runs: one TOML file per run in runs/, read with tomllib (no torch, no third-party package).

A run file `runs/NN.toml` is run NN (its number is its file name). Its keys:

    description = "teacher: cross-entropy, weight decay 1e-4"    # optional, shown by --help and the report
    script = "train.py"                                          # train.py, train_dice.py, train_distillation.py,
                                                                 # train_distillation_dice.py
    teacher-run = 2                                              # students: the run whose last model teaches
    flags = { weight-decay = 1e-4 }                              # optional: flags of every stage
    schedule = { kind = "poly", warmup-fraction = 0.01 }         # optional: one lr schedule across the stages
    stages = [                                                   # stage s = the s-th entry
        { profile = 1, epochs = 100 },                           # a stage's keys are flags of the script
        { profile = 2, epochs = 100, batch-size = 16 },
    ]

Every key of `flags` and of a stage is a flag of the script without its leading `--` (`batch-size = 16` is
`--batch-size 16`, `amp = true` is `--amp`, `amp = false` leaves it out). A stage needs a `profile`. The registry
adds what links the stages: `--experiment-id` (run r, stage s: fastscnn-training-experiment-NN, NN = 5(r-1)+s; a
stage may set its own `experiment-id`, and must beyond stage 5), the previous stage's model (stage 1: none) and, for
students, the teacher's last model; a stage's own key wins over these too. Precedence, one rule for every value:
command-line flags > the stage's entry > the run's `flags` > the recipe (`--recipe`) > the script's defaults.

`schedule` makes the stages one learning-rate schedule (training/engine/optim.py): each stage gets `--lr-schedule
KIND`, `--warmup-fraction F` (default 0) and `--schedule-span A:B`, its part of the run, with span widths
proportional to the stages' epochs as the run file gives them (a stage of 0 epochs, a BatchNorm recalibration, takes
no part). Without it every stage runs its own schedule (the original's eight runs).

Run-level keys are checked here (an unknown one is one `error:` line naming the file and the keys expected); flag
names and values are checked against the script's own parser by the chain (training/cluster/chain.py).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import UserError

REPO = Path(__file__).resolve().parents[2]
RUNS_DIR = REPO / "runs"
ID_PREFIX = "fastscnn-training-experiment-"
STAGES_PER_RUN = 5  # of the id scheme NN = 5(r-1)+s: a longer run names its extra stages itself


@dataclass(frozen=True)
class Script:
    main: str  # the main*.sh that a job runs for this script
    student: bool  # distils from a trained teacher

    @property
    def previous_flag(self) -> str:
        return "--previous-student-model-path" if self.student else "--previous-model-path"


SCRIPTS = {
    "train.py": Script("main.sh", student=False),
    "train_dice.py": Script("main_dice.sh", student=False),
    "train_distillation.py": Script("main_distillation.sh", student=True),
    "train_distillation_dice.py": Script("main_distillation_dice.sh", student=True),
}
TEACHER_FLAG = "--trained-teacher-model-path"
# the run-level keys and their TOML types (a later key is added here, and read where it is used)
RUN_KEYS = {"description": str, "script": str, "teacher-run": int, "flags": dict, "schedule": dict, "stages": list}
# the keys of `schedule` and the flag each one gives every stage; kind is required
SCHEDULE_KEYS = {"kind": "lr-schedule", "warmup-fraction": "warmup-fraction"}
SPAN_FLAGS = ("lr-schedule", "schedule-span", "warmup-fraction")  # what `schedule` sets: not in flags or a stage
FLAG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
SET_BY_REGISTRY = ("run", "stage")  # the flags that name a stage's place in its run
ONE_SHOT = ("restart",)  # flags that act once, on the first run of the first job given them (never in a run file)


def experiment_id(run: int, stage: int) -> str:
    """The original registry's id of run `run`, stage `stage` (1-5)."""
    return f"{ID_PREFIX}{STAGES_PER_RUN * (run - 1) + stage:02d}"


def format_value(value) -> str:
    """A TOML value as a command-line word: 1e-4 stays 1e-4 (not 0.0001), 100 stays 100."""
    if isinstance(value, float):
        if value != 0 and math.isfinite(value) and abs(value) < 1e-3:
            mantissa, exponent = f"{value:e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            short = f"{mantissa}e{int(exponent)}"
            if float(short) == value:
                return short
        return repr(value)
    return str(value)


def flag_words(flags: dict) -> list[str]:
    """{"batch-size": 16, "amp": True, "x": False} -> ["--batch-size", "16", "--amp"]."""
    words = []
    for name, value in flags.items():
        if value is True:
            words.append(f"--{name}")
        elif value is not False:
            words += [f"--{name}", format_value(value)]
    return words


@dataclass
class Run:
    number: int
    path: Path
    script: str
    stages: list[dict]
    flags: dict = field(default_factory=dict)
    teacher_run: int | None = None
    description: str = ""
    schedule: dict = field(default_factory=dict)  # the run's `schedule` table (empty: each stage its own)
    teacher_of: Run | None = None  # the teacher run, linked by load_registry
    name: str | None = None  # a run written inline (a comparison's arm): recorded as --run instead of the number

    @property
    def where(self) -> str:
        return display_path(self.path) + (f": {self.name}" if self.name else "")

    @property
    def kind(self) -> Script:
        return SCRIPTS[self.script]

    def experiment_id(self, stage: int) -> str:
        own = self.stages[stage - 1].get("experiment-id")
        return str(own) if own is not None else experiment_id(self.number, stage)

    def model_path(self, stage: int, models: str = "models") -> str:
        return f"{models}/{self.experiment_id(stage)}.pth"

    def previous_model(self, stage: int, models: str = "models") -> str:
        return "none" if stage == 1 else self.model_path(stage - 1, models)

    def teacher_model(self, models: str = "models") -> str | None:
        """The teacher run's last model (relative to the repository, or in `models`), for students."""
        if self.teacher_of is None:
            return None
        return self.teacher_of.model_path(len(self.teacher_of.stages), models)

    def label(self) -> str:
        """How reports name the run: its number, script and weight decay."""
        decay = self.flags.get("weight-decay")
        decay_text = f"weight decay {format_value(decay)}" if decay else "no weight decay"
        return f"run {self.number} ({self.script}, {decay_text})"

    def stage_flags(self, stage: int, teacher: str | None = None, models: str = "models") -> dict[str, object]:
        """The stage's flags from the run file, by name without '--': what links the stages (the previous model,
        the teacher, in the folder `models`), replaced by the run's `flags`, replaced by the stage's own keys; in the
        order: place in the run, the stage's keys, the run's, the links."""
        if not 1 <= stage <= len(self.stages):
            raise UserError(f"{self.where}: no stage {stage} (expected a stage 1-{len(self.stages)})")
        entry = self.stages[stage - 1]
        place = {"run": self.name or self.number, "stage": stage, "experiment-id": self.experiment_id(stage)}
        links = {self.kind.previous_flag[2:]: self.previous_model(stage, models)}
        if self.kind.student:
            links[TEACHER_FLAG[2:]] = self.teacher_model(models)
        values = {**place, **links, **self.flags, **self.schedule_flags(stage), **entry}
        if teacher is not None:  # --teacher PATH: a command-line value
            values[TEACHER_FLAG[2:]] = teacher
        order = [*place, *entry, *self.flags, *self.schedule_flags(stage), *links]
        return {name: values[name] for name in dict.fromkeys(order)}

    def schedule_flags(self, stage: int) -> dict[str, object]:
        """The flags of the run's `schedule` for `stage`: the kind, the warm-up and the stage's span [A, B], the
        run's epochs before the stage and up to its end as fractions of all the run's epochs (none for a stage of
        0 epochs, or without `schedule`)."""
        if not self.schedule:
            return {}
        epochs = [
            int(self.stages[s - 1].get("epochs", self.flags.get("epochs"))) for s in range(1, len(self.stages) + 1)
        ]
        if epochs[stage - 1] == 0:
            return {}
        total, before = sum(epochs), sum(epochs[: stage - 1])
        span = f"{before / total!r}:{(before + epochs[stage - 1]) / total!r}"
        flags = {SCHEDULE_KEYS[key]: value for key, value in self.schedule.items()}
        return {**flags, "schedule-span": span}


def display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _check_flags(where: str, flags: object, what: str) -> dict:
    if not isinstance(flags, dict):
        raise UserError(f"{where}: {what} must be a table of flags (expected e.g. {{ profile = 1, epochs = 100 }})")
    for name, value in flags.items():
        if not FLAG_NAME.match(name):
            raise UserError(f"{where}: {what}: key '{name}' is not a flag name (expected e.g. batch-size, no '--')")
        if name in SET_BY_REGISTRY or name in ONE_SHOT:
            why = "set by the registry" if name in SET_BY_REGISTRY else "one-shot: give it after -- for one submission"
            raise UserError(f"{where}: {what}: key '{name}' cannot be set in a run file ({why})")
        if isinstance(value, (dict, list)) or not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{where}: {what}: {name} = {value!r}: expected a string, a number or true/false")
    return flags


def parse_run(path: Path, number: int) -> Run:
    """One run file, checked (not yet linked to its teacher run)."""
    where = display_path(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{where}: not valid TOML ({error})") from None
    return run_from_table(data, Path(path), number, where)


def run_from_table(data: dict, path: Path, number: int, where: str, name: str | None = None) -> Run:
    """A run from the table of a run file (or a run written inline elsewhere, e.g. a comparison's arm, then named
    `name`), checked; `where` names it in the messages."""
    for key, value in data.items():
        if key not in RUN_KEYS:
            raise UserError(f"{where}: unknown key '{key}' (expected one of: {', '.join(RUN_KEYS)})")
        expected = RUN_KEYS[key]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is int:
            raise UserError(f"{where}: {key} = {value!r}: expected a {_type_name(expected)}")
    if "script" not in data or data["script"] not in SCRIPTS:
        raise UserError(f"{where}: script = {data.get('script')!r}: expected one of {', '.join(SCRIPTS)}")
    stages = data.get("stages") or []
    if not stages:
        raise UserError(f"{where}: no stages (expected stages = [ {{ profile = 1, epochs = 100 }}, ... ])")
    for index, stage in enumerate(stages, start=1):
        _check_flags(where, stage, f"stage {index}")
        if "profile" not in stage:
            raise UserError(f"{where}: stage {index} has no profile (expected e.g. profile = {index})")
        if index > STAGES_PER_RUN and "experiment-id" not in stage:
            raise UserError(
                f"{where}: stage {index}: expected an experiment-id (the registry's numbers, NN = 5(r-1)+s, "
                f"cover stages 1-{STAGES_PER_RUN} only)"
            )
    _check_schedule(where, data)
    student = SCRIPTS[data["script"]].student
    if student != ("teacher-run" in data):
        need = "needs a teacher-run (the run whose last model teaches)" if student else "has no teacher"
        raise UserError(f"{where}: {data['script']} {need}: {'add' if student else 'remove'} the key 'teacher-run'")
    return Run(
        number=number,
        path=Path(path),
        script=data["script"],
        stages=[dict(s) for s in stages],
        flags=dict(_check_flags(where, data.get("flags", {}), "flags")),
        teacher_run=data.get("teacher-run"),
        description=data.get("description", ""),
        schedule=dict(data.get("schedule", {})),
        name=name,
    )


def _check_schedule(where: str, data: dict) -> None:
    """The run's `schedule` table: its keys, and what the spans need (every stage's epochs, the flags it sets given
    nowhere else). The kind's and the warm-up's values are checked by the script's own parser, as any flag's."""
    schedule = data.get("schedule")
    if schedule is None:
        return
    for key, value in schedule.items():
        if key not in SCHEDULE_KEYS:
            raise UserError(f"{where}: schedule: unknown key '{key}' (expected one of: {', '.join(SCHEDULE_KEYS)})")
        if isinstance(value, (dict, list, bool)):
            raise UserError(f"{where}: schedule: {key} = {value!r}: expected a string or a number")
    if "kind" not in schedule:
        raise UserError(f'{where}: schedule has no kind (expected e.g. schedule = {{ kind = "poly" }})')
    for what, flags in [
        ("flags", data.get("flags", {})),
        *((f"stage {i}", s) for i, s in enumerate(data["stages"], 1)),
    ]:
        for name in SPAN_FLAGS:
            if name in flags:
                raise UserError(f"{where}: {what}: key '{name}' is set by the run's schedule (expected it there only)")
        epochs = flags.get("epochs", data.get("flags", {}).get("epochs"))
        if what != "flags" and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
            raise UserError(
                f"{where}: {what}: epochs = {epochs!r}: a run with a schedule needs every stage's epochs (a whole "
                f"number >= 0: the spans are proportional to them)"
            )


def _type_name(kind: type) -> str:
    return {str: "string", int: "whole number", dict: "table", list: "list of tables"}[kind]


def load_registry(runs_dir: Path | None = None) -> dict[int, Run]:
    """Every run file of `runs_dir` (default: the repository's runs/), checked and linked to its teacher."""
    runs_dir = Path(runs_dir or RUNS_DIR)
    runs: dict[int, Run] = {}
    for path in sorted(runs_dir.glob("*.toml")):
        if not path.stem.isdigit() or int(path.stem) < 1:
            raise UserError(f"{display_path(path)}: expected a file name NN.toml, NN the run's number (1, 2, ...)")
        number = int(path.stem)
        if number in runs:
            raise UserError(f"{display_path(path)}: run {number} is also {runs[number].where}")
        runs[number] = parse_run(path, number)
    if not runs:
        raise UserError(f"{display_path(runs_dir)}: no run files (expected runs/01.toml, ...)")
    owners: dict[str, str] = {}
    for run in runs.values():
        for stage in range(1, len(run.stages) + 1):
            name = run.experiment_id(stage)
            if name in owners:
                raise UserError(f"{run.where}: stage {stage}'s experiment id {name} is also {owners[name]}'s")
            owners[name] = f"{run.where} stage {stage}"
        if run.teacher_run is not None:
            if run.teacher_run not in runs:
                raise UserError(
                    f"{run.where}: teacher-run = {run.teacher_run}: no such run in {display_path(runs_dir)}"
                )
            run.teacher_of = runs[run.teacher_run]
    return runs


def find_stage(experiment: str, runs: dict[int, Run]) -> tuple[Run, int] | None:
    """The run and stage that the registry gives this experiment id, or None."""
    for run in runs.values():
        for stage in range(1, len(run.stages) + 1):
            if run.experiment_id(stage) == experiment:
                return run, stage
    return None
