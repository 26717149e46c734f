# ruff: noqa: F811 (the fixtures imported from chain_helpers are the tests' parameters)
"""The registry of runs as files (runs/NN.toml, training/cluster/runs.py) and the chain's reading of it
(training/cluster/chain.py): the original eight runs, refusals of a bad run file, a new run, a run with one schedule
across its stages, the order in which a setting wins, and `--run 3 --dry-run` printing the same chain as before the
chain moved to Python."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from chain_helpers import (  # noqa: F401 (fixtures: fake_slurm, repo_copy)
    ORIGINAL_RUNS,
    REPO,
    STUDENT,
    TEACHER,
    _dry_run_commands,
    checked,
    dry_run_job_side,
    eid,
    expected_flags,
    fake_slurm,
    jobscript,
    repo_copy,
)

from training.cluster import chain, runs
from training.errors import UserError

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------------------ the original eight
def test_the_run_files_are_the_original_registry():
    registry = runs.load_registry()
    assert set(registry) >= set(ORIGINAL_RUNS) == set(range(1, 9))
    for number, (main, weight_decay, teacher_run) in ORIGINAL_RUNS.items():
        run = registry[number]
        assert run.kind.main == main and len(run.stages) == 5
        assert run.flags == ({"weight-decay": 1e-4} if weight_decay else {})
        assert [(s["profile"], s["epochs"]) for s in run.stages] == [(k, 100) for k in range(1, 6)]
        assert [run.experiment_id(s) for s in range(1, 6)] == [eid(number, s) for s in range(1, 6)]
        assert run.previous_model(1) == "none" and run.previous_model(3) == f"models/{eid(number, 2)}.pth"
        assert run.teacher_model() == (f"models/{eid(teacher_run, 5)}.pth" if teacher_run else None)


def test_format_value_keeps_numbers_as_written():
    assert [runs.format_value(v) for v in (1e-4, 4e-5, 0.5, 100, 0, 1.0, "low", 0.12)] == [
        "1e-4",
        "4e-5",
        "0.5",
        "100",
        "0",
        "1.0",
        "low",
        "0.12",
    ]
    assert runs.flag_words({"batch-size": 16, "amp": True, "compile": False}) == ["--batch-size", "16", "--amp"]


# ------------------------------------------------------------------------------------------------ bad run files
def write_runs(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


GOOD = 'script = "train.py"\nstages = [{ profile = 1, epochs = 2 }]\n'
BAD_RUN_FILES = {
    "unknown key": (
        {"03.toml": GOOD + "teacher = 1\n"},
        "03.toml: unknown key 'teacher' (expected one of: description, script, teacher-run, flags, schedule, stages)",
    ),
    "unknown script": ({"01.toml": 'script = "train_x.py"\nstages = []\n'}, "script = 'train_x.py': expected one of"),
    "no stages": ({"01.toml": 'script = "train.py"\n'}, "01.toml: no stages"),
    "stage without profile": ({"01.toml": 'script = "train.py"\nstages = [{ epochs = 2 }]\n'}, "has no profile"),
    "a list as a flag": (
        {"01.toml": 'script = "train.py"\nstages = [{ profile = 1, lr = [1, 2] }]\n'},
        "stage 1: lr = [1, 2]: expected a string, a number or true/false",
    ),
    "a flag with dashes": (
        {"01.toml": 'script = "train.py"\nstages = [{ profile = 1, "--lr" = 1 }]\n'},
        "stage 1: key '--lr' is not a flag name",
    ),
    "restart in a run file": (
        {"01.toml": 'script = "train.py"\nflags = { restart = true }\nstages = [{ profile = 1 }]\n'},
        "flags: key 'restart' cannot be set in a run file (one-shot",
    ),
    "the stage's number": (
        {"01.toml": 'script = "train.py"\nstages = [{ profile = 1, stage = 2 }]\n'},
        "key 'stage' cannot be set in a run file (set by the registry)",
    ),
    "teacher-run a string": ({"01.toml": GOOD + 'teacher-run = "1"\n'}, "teacher-run = '1': expected a whole number"),
    "student without teacher": (
        {"01.toml": 'script = "train_distillation.py"\nstages = [{ profile = 1 }]\n'},
        "train_distillation.py needs a teacher-run",
    ),
    "teacher run missing": (
        {"01.toml": 'script = "train_distillation.py"\nteacher-run = 4\nstages = [{ profile = 1 }]\n'},
        "teacher-run = 4: no such run in",
    ),
    "stage 6 without an id": (
        {"01.toml": 'script = "train.py"\nstages = [' + "{ profile = 1 }, " * 6 + "]\n"},
        "stage 6: expected an experiment-id",
    ),
    "an id twice": (
        {
            "01.toml": GOOD,
            "02.toml": 'script = "train.py"\nstages = [{ profile = 1, experiment-id = "' + eid(1, 1) + '" }]\n',
        },
        f"stage 1's experiment id {eid(1, 1)} is also",
    ),
    "not TOML": ({"01.toml": "script = train.py\n"}, "01.toml: not valid TOML"),
    "a file name that is no number": ({"fixres.toml": GOOD}, "fixres.toml: expected a file name NN.toml"),
    "run 1 twice": ({"1.toml": GOOD, "01.toml": GOOD}, "run 1 is also"),
    "a schedule's unknown key": (
        {"01.toml": GOOD + 'schedule = { kind = "poly", power = 2 }\n'},
        "01.toml: schedule: unknown key 'power' (expected one of: kind, warmup-fraction)",
    ),
    "a schedule without kind": ({"01.toml": GOOD + "schedule = { warmup-fraction = 0.1 }\n"}, "schedule has no kind"),
    "a schedule and a stage's own span": (
        {
            "01.toml": 'schedule = { kind = "linear" }\n'
            + GOOD.replace("epochs = 2", 'epochs = 2, schedule-span = "0:1"')
        },
        "01.toml: stage 1: key 'schedule-span' is set by the run's schedule (expected it there only)",
    ),
    "a schedule and lr-schedule in flags": (
        {"01.toml": 'schedule = { kind = "linear" }\nflags = { lr-schedule = "poly" }\n' + GOOD},
        "01.toml: flags: key 'lr-schedule' is set by the run's schedule",
    ),
    "a schedule and a stage without epochs": (
        {"01.toml": 'schedule = { kind = "linear" }\nscript = "train.py"\nstages = [{ profile = 1 }]\n'},
        "stage 1: epochs = None: a run with a schedule needs every stage's epochs",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RUN_FILES))
def test_a_bad_run_file_is_one_error_naming_it(tmp_path, case):
    files, message = BAD_RUN_FILES[case]
    with pytest.raises(UserError) as error:
        runs.load_registry(write_runs(tmp_path / "runs", files))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_key_is_refused_by_the_jobscript_with_one_line(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "runs" / "03.toml").write_text((repo_copy / "runs" / "03.toml").read_text() + "x = 1\n")
    result = jobscript(repo_copy, TEACHER, "--run", "1", "--dry-run", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "error: runs/03.toml: unknown key 'x' (expected one of: description, script, teacher-run, flags, schedule, "
        "stages)\n"
    )
    assert calls() == []


# ------------------------------------------------------------------------------------------------ a new run
NEW_RUN = """\
# Run 10: the student of run 2 with channel-wise distillation at T = 1 (CWD's Cityscapes setting), batch 16 at the
# two highest profiles, mixed precision throughout; experiments fastscnn-training-experiment-46 to -50.
description = "student of run 2: CWD, T = 1, weight decay 1e-4"
script = "train_distillation.py"
teacher-run = 2
flags = { weight-decay = 1e-4, kd-loss = "cwd", temperature = 1.0, amp = true }
stages = [
    { profile = 1, epochs = 100 },
    { profile = 2, epochs = 100 },
    { profile = 3, epochs = 80 },
    { profile = 4, epochs = 60, batch-size = 16 },
    { profile = 5, epochs = 40, batch-size = 16, amp = false },
]
"""


def test_a_new_run_is_one_new_file(repo_copy, fake_slurm):
    env, calls = fake_slurm
    (repo_copy / "runs" / "10.toml").write_text(NEW_RUN)
    result = jobscript(repo_copy, STUDENT, "--run", "10", "--dry-run", "--", "--epochs", "1", env=checked(env))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # T = 1 is usual for CWD: no warning
    commands = _dry_run_commands(result.stdout)
    assert len(commands) == 5 and calls() == []
    teacher = f"models/{eid(2, 5)}.pth"
    for stage, line in enumerate(commands, start=1):
        script, once, flags = dry_run_job_side(line)
        assert (script, once) == ("main_distillation.sh", [])
        expected = {
            "--run": "10",
            "--stage": str(stage),
            "--experiment-id": f"fastscnn-training-experiment-{45 + stage}",
            "--profile": str(stage),
            "--weight-decay": "1e-4",
            "--kd-loss": "cwd",
            "--temperature": "1.0",
            "--previous-student-model-path": "none" if stage == 1 else f"models/{eid(10, stage - 1)}.pth",
            "--trained-teacher-model-path": teacher,
            "--epochs": "1",  # the command line's
        }
        if stage < 5:
            expected["--amp"] = True
        if stage >= 4:
            expected["--batch-size"] = "16"
        assert flags == expected, line
    usage = jobscript(repo_copy, STUDENT, "--help", env=env).stdout
    assert "10: train_distillation.py (main_distillation.sh), student of run 2: CWD, T = 1" in usage


# ------------------------------------------------------------------------------------------------ precedence
@pytest.fixture(scope="module")
def train_flags():
    parser, note = chain.script_parser(REPO / "train.py")
    assert parser is not None, note
    return chain.Flags(parser, "train.py")


def resolved(flags: chain.Flags, run: int, stage: int, extra: list[str]) -> dict:
    from training.engine.recipes import resolve_recipe

    (job,) = chain.plan_stages(runs.load_registry()[run], stage, stage, None, extra, flags)
    args = flags.parser.parse_args(job.flags)
    resolve_recipe(args, 1)
    return vars(args)


def test_precedence_command_line_then_run_file_then_recipe_then_script(train_flags):
    # run 1 declares no weight decay: the recipe's (original 0, mmseg 4e-5); run 2 declares 1e-4, which wins over
    # any recipe; a flag on the command line wins over the run file
    assert resolved(train_flags, 1, 1, [])["weight_decay"] == 0.0
    assert resolved(train_flags, 1, 1, ["--recipe", "mmseg"])["weight_decay"] == pytest.approx(4e-5)
    assert resolved(train_flags, 2, 1, ["--recipe", "mmseg"])["weight_decay"] == pytest.approx(1e-4)
    assert resolved(train_flags, 2, 1, ["--weight-decay", "0"])["weight_decay"] == 0.0
    assert (
        resolved(train_flags, 2, 3, [])["epochs"] == 100 and resolved(train_flags, 2, 3, ["--epochs=7"])["epochs"] == 7
    )
    # the script's defaults where nobody says anything
    assert resolved(train_flags, 2, 3, [])["batch_size"] == 32 and resolved(train_flags, 2, 3, [])["seed"] == 42


def test_a_flag_given_twice_is_printed_once(train_flags):
    (job,) = chain.plan_stages(
        runs.load_registry()[2], 2, 2, None, ["--model-path", "x.pth", "--weight-decay=0", "--amp"], train_flags
    )
    words = [w.split("=")[0] for w in job.flags if w.startswith("--")]
    assert len(words) == len(set(words) - {"--model-path"}) + 1  # --model-path is --previous-model-path's alias
    assert "--previous-model-path" not in words and job.flags[-4:] == [
        "--model-path",
        "x.pth",
        "--weight-decay=0",
        "--amp",
    ]


def test_a_typo_in_a_run_file_is_caught_before_submission(repo_copy, fake_slurm):
    env, calls = fake_slurm
    path = repo_copy / "runs" / "01.toml"
    path.write_text(path.read_text().replace("{ profile = 2, epochs = 100 }", "{ profile = 2, epoch = 100 }"))
    result = jobscript(repo_copy, TEACHER, "--run", "1", "--dry-run", env=checked(env))
    assert result.returncode == 2 and calls() == []
    assert result.stderr == "error: runs/01.toml: stage 2: 'epoch' is not a flag of train.py (did you mean epochs?)\n"


def test_an_unusual_temperature_is_a_warning_at_submission(repo_copy, fake_slurm):
    env, calls = fake_slurm
    result = jobscript(repo_copy, STUDENT, "--run", "3", "--dry-run", "--", "--temperature", "0.5", env=checked(env))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning: --temperature 0.5 is unusual for --kd-loss kl") == 1  # once, not per stage


# ------------------------------------------------------------------------------------------------ before the move
def sbatch_options(words: list[str]) -> list[str]:
    """The words between `sbatch` and the jobscript, less --export (which carried the old stage settings)."""
    end = next(i for i, w in enumerate(words) if w.endswith(".sh"))
    return [w for w in words[1:end] if not w.startswith("--export=")]


def old_stage_arguments(words: list[str]) -> list[str]:
    """The training script's argv of a chain line printed before the move: the stage's settings were --export
    variables, which the old main_distillation.sh (kept in tests/cluster/data) turned into flags."""
    export = next(w for w in words if w.startswith("--export="))
    variables = dict(item.split("=", 1) for item in export[len("--export=ALL,") :].split(","))
    old_main = (DATA / "main_distillation_before.txt").read_text()
    defaults = dict(re.findall(r'^(\w+)="\$\{\w+:-(.*)\}"', old_main, re.M))
    command = old_main[old_main.index("run_python train_distillation.py") :].replace("\\\n", " ")
    command = command.replace('"${DEMO_ARGS[@]}" "${STAGE_ARGS[@]}"', "").split()[2:]
    values = {**defaults, **variables}
    return [values[w[2:-1]] if w.startswith('"$') else w for w in command]


def test_run3_dry_run_prints_the_same_chain_as_before_the_move(repo_copy, fake_slurm):
    from training.engine.recipes import resolve_recipe

    env, _ = fake_slurm
    before = (DATA / "run3_dry_run_before.txt").read_text().replace("{ROOT}", str(repo_copy))
    result = jobscript(repo_copy, STUDENT, "--run", "3", "--dry-run", env=checked(env))
    assert result.returncode == 0, result.stderr
    old, new = _dry_run_commands(before), _dry_run_commands(result.stdout)
    assert len(old) == len(new) == 5
    assert "teacher models/fastscnn-training-experiment-05.pth" in result.stdout.splitlines()[0]
    parser, _ = chain.script_parser(REPO / "train_distillation.py")
    for stage, (old_line, new_line) in enumerate(zip(old, new), start=1):
        old_words = shlex.split(old_line[old_line.index("$(") + 2 : -1])
        new_words = shlex.split(new_line[new_line.index("$(") + 2 : -1])
        # the same job name, directory and dependency on the stage before
        assert sbatch_options(new_words) == sbatch_options(old_words)
        assert f"--job-name={eid(3, stage)}" in new_words
        # the same training arguments once resolved (the scripts' defaults, the recipe), besides the run and stage
        old_args = parser.parse_args(old_stage_arguments(old_words))
        new_args = parser.parse_args(new_words[new_words.index("--") + 1 :])
        for args in (old_args, new_args):
            resolve_recipe(args, 1)
            args.data_dir = args.data_dir or f"./data/{args.dataset}"  # the default, as training/engine/build.py has it
        assert (new_args.run, new_args.stage) == ("3", stage)
        assert vars(old_args) == {**vars(new_args), "run": None, "stage": None}
        assert new_args.experiment_id == eid(3, stage) and new_args.profile == str(stage)
        assert new_args.trained_teacher_model_path == "models/fastscnn-training-experiment-05.pth"


def test_with_an_output_dir_the_stages_link_models_there(repo_copy, fake_slurm, tmp_path):
    # --output-dir (models/, checkpoints/ under it): a stage starts from the previous stage's model there
    env, calls = fake_slurm
    out = tmp_path / "out"
    result = jobscript(repo_copy, STUDENT, "--run", "4", "--dry-run", "--", "--output-dir", str(out), env=env)
    assert result.returncode == 0, result.stderr
    for stage, line in enumerate(_dry_run_commands(result.stdout), start=1):
        flags = dry_run_job_side(line)[2]
        previous = "none" if stage == 1 else f"{out}/models/{eid(4, stage - 1)}.pth"
        assert flags["--previous-student-model-path"] == previous
        assert flags["--trained-teacher-model-path"] == f"{out}/models/{eid(2, 5)}.pth"
    result = jobscript(repo_copy, TEACHER, "--run", "2", "--from-stage", "2", "--", f"--output-dir={out}", env=env)
    assert result.returncode == 2 and calls() == []
    assert f"previous checkpoint {out}/models/{eid(2, 1)}.pth not found" in result.stderr


# ------------------------------------------------------------------------------------------------ one schedule
SCHEDULED = """\
script = "train.py"
flags = { epochs = 2 }
schedule = { kind = "cosine", warmup-fraction = 0.05 }
stages = [
    { profile = 1 },
    { profile = 2, epochs = 1 },
    { profile = 3, epochs = 1 },
    { profile = 3, epochs = 0, bn-recalibrate = 4, experiment-id = "recalibrated" },
]
"""


def test_a_schedule_gives_each_stage_its_span_in_proportion_to_its_epochs(tmp_path):
    run = runs.load_registry(write_runs(tmp_path / "runs", {"01.toml": SCHEDULED}))[1]
    # epochs 2, 1, 1 of 4: spans [0, 2/4], [2/4, 3/4], [3/4, 1]; the 0-epoch stage takes none
    spans = [run.stage_flags(s).get("schedule-span") for s in range(1, 5)]
    assert spans == ["0.0:0.5", "0.5:0.75", "0.75:1.0", None]
    for stage in (1, 2, 3):
        flags = run.stage_flags(stage)
        assert (flags["lr-schedule"], flags["warmup-fraction"]) == ("cosine", 0.05)
    assert "lr-schedule" not in run.stage_flags(4) and run.stage_flags(4)["epochs"] == 0


def test_run_9_one_schedule_growing_regularisation_and_a_recalibration_stage(train_flags):
    from training.engine.cli import check_args

    run = runs.load_registry()[9]
    assert len(run.stages) == 6 and run.schedule == {"kind": "poly", "warmup-fraction": 0.01}
    stages, jobs = [], []
    for stage in range(1, 7):
        (job,) = chain.plan_stages(run, stage, stage, None, [], train_flags)
        jobs.append(job)
        args = train_flags.parser.parse_args(job.flags)
        from training.engine.recipes import resolve_recipe

        resolve_recipe(args, 1)
        check_args(args)  # every stage is one the script accepts
        stages.append(args)
    assert [a.schedule_span for a in stages] == ["0.0:0.2", "0.2:0.4", "0.4:0.6", "0.6:0.8", "0.8:1.0", None]
    assert all(a.lr_schedule == "poly" and a.warmup_fraction == 0.01 for a in stages[:5])
    assert [a.profile for a in stages] == ["1", "2", "3", "4", "5", "5"]
    # regularisation never weakens as the resolution grows
    ranges = [tuple(map(float, a.scale_range.split(","))) for a in stages[:5]]
    assert all(hi - lo <= next_hi - next_lo for (lo, hi), (next_lo, next_hi) in zip(ranges, ranges[1:]))
    for name in ("photometric_strength", "dropout"):
        values = [getattr(a, name) for a in stages[:5]]
        assert values == sorted(values) and values[0] < values[-1], name
    last = stages[5]
    assert (last.epochs, last.whole_images, last.bn_recalibrate) == (0, True, 200)
    words = jobs[5].flags
    assert words[words.index("--previous-model-path") + 1] == "models/fastscnn-training-experiment-45.pth"
