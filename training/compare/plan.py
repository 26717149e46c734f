"""The plan of a comparison: each arm's stages as the chain would run them (training/cluster/chain.py: the same
precedence, the same flag checks, the previous stage's model in the arm's own folder), what each stage costs, and the
epochs that bring every arm to the budget. Written to OUT/plan.json before anything runs; the report reads it.

Precedence for every value of a stage: the flags after `--` of the command > the arm's run (its stage entries, then
its `flags`; for a run file, the arm's `flags` over the file's) > the comparison's `flags` > the recipe > the
script's defaults. The comparison sets `--epochs` (the budget) and `--output-dir` (OUT/<arm>) itself.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from training.cluster import chain
from training.cluster import runs as registry
from training.compare.budget import (
    StageCost,
    check_within,
    deviation,
    fit_epochs,
    forward_macs,
    images_per_epoch,
    per_epoch,
    probe_seconds,
)
from training.compare.config import SET_BY_COMPARISON, Arm, Comparison
from training.errors import UserError

PLAN_FILE = "plan.json"


@dataclass
class ArmPlan:
    arm: Arm
    jobscript: str  # the chain's jobscript for this arm's kind of run
    output_dir: Path  # OUT/<arm>
    run: registry.Run  # with the budget's epochs
    jobs: list  # chain.StageJob per stage: its command line
    costs: list[StageCost]
    epochs: list[int]
    planned: float  # the budget's measure of these epochs: FLOPs, or estimated seconds
    teacher: str | None = None

    @property
    def name(self) -> str:
        return self.arm.name


@dataclass
class Plan:
    comparison: Comparison
    output_dir: Path
    budget: float  # FLOPs, or seconds
    arms: list[ArmPlan]
    warnings: list[str]

    def to_dict(self) -> dict:
        budget = self.comparison.budget
        return {
            "comparison": registry.display_path(self.comparison.path),
            "description": self.comparison.description,
            "budget": {
                "kind": budget.kind,
                "reference": budget.reference,
                "amount": self.budget,
                "unit": "FLOP" if budget.kind == "compute" else "s",
            },
            "arms": [_arm_dict(arm, self.budget) for arm in self.arms],
        }


def _arm_dict(arm: ArmPlan, budget: float) -> dict:
    return {
        "name": arm.name,
        "source": arm.arm.source,
        "script": arm.run.script,
        "folder": arm.name,
        "epochs": arm.epochs,
        "planned": arm.planned,
        "deviation": deviation(arm.planned, budget),
        "stages": [
            {
                **asdict(cost),
                "epochs": epochs,
                "flop_per_epoch": cost.flop_per_epoch,
                "fixed_flop": cost.fixed_flop,
                "command": [arm.run.script, *job.flags],
            }
            for cost, epochs, job in zip(arm.costs, arm.epochs, arm.jobs)
        ],
    }


# ------------------------------------------------------------------------------------------ the arms' stages
class ScriptInfo:
    """A training script's parser (the chain's checks) and its profile table, loaded once."""

    def __init__(self, script: str):
        path = registry.REPO / script
        parser, note = chain.script_parser(path)
        if parser is None:
            raise UserError(f"{script}: cannot be imported here ({note}); a comparison counts MACs with torch")
        self.flags = chain.Flags(parser, script)
        spec = importlib.util.spec_from_file_location(f"_compare_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.profiles = module.PROFILES


class DataInfo:
    """What the plan needs of a data set: training and validation image counts, classes, native size."""

    def __init__(self, dataset: str, data_dir: str):
        from training.data.dataset import dataset_files
        from training.data.layouts import native_size

        train, _, classes, _ = dataset_files(data_dir, "train", dataset)
        val, _, _, _ = dataset_files(data_dir, "val", dataset)
        self.train_images, self.val_images, self.classes = len(train), len(val), classes
        self.native = native_size(dataset, data_dir)


def stage_args(flags: chain.Flags, where: str, words: list[str], warnings: list[str]):
    """The stage's arguments as the stage will parse them (recipe resolved), after the chain's checks."""
    from training.engine.recipes import resolve_recipe

    for warning in flags.validate(where, words, 1):
        if warning not in warnings:
            warnings.append(warning)
    args = flags.parser.parse_args(words)
    resolve_recipe(args, 1)
    return args


def stage_cost(experiment_id: str, args, profiles: dict, data: DataInfo, student: bool) -> StageCost:
    """What one epoch of the stage costs (training/compare/budget.py says what is counted)."""
    from training.data.layouts import dataset_profile
    from training.profiles import resolve_profile

    profile = resolve_profile(args.profile, profiles)
    profile = dataset_profile(profile, args.dataset, data.native)
    whole = bool(getattr(args, "whole_images", False))
    size = profile.image_size if whole else profile.patch_size
    classes = data.classes.num_classes
    arch = getattr(args, "arch", "fast_scnn")
    teacher = forward_macs(getattr(args, "teacher_arch", "fast_scnn"), classes, size) if student else 0
    recalibration = int(getattr(args, "bn_recalibrate", 0) or 0) * args.batch_size
    return StageCost(
        experiment_id=experiment_id,
        profile=profile.name,
        input_size=tuple(size),
        image_size=tuple(profile.image_size),
        images_per_epoch=images_per_epoch(data.train_images, args.batch_size),
        student_macs=forward_macs(arch, classes, tuple(size)),
        teacher_macs=teacher,
        fixed_macs=recalibration * forward_macs(arch, classes, tuple(size)),
    )


def data_dir_of(args) -> str:
    """The stage's data folder as the stage will see it: relative paths are the repository's (where stages run)."""
    path = Path(args.data_dir or f"./data/{args.dataset}").expanduser()
    return str(path if path.is_absolute() else (registry.REPO / path).resolve())


def teacher_path(arm: Arm) -> str | None:
    """A student arm's teacher model, absolute (the arm's `teacher`, else its teacher run's last model)."""
    if not arm.run.kind.student:
        return None
    path = arm.teacher or arm.run.teacher_model()
    path = Path(path).expanduser()
    return str(path if path.is_absolute() else registry.REPO / path)


def with_epochs(run: registry.Run, epochs: list[int]) -> registry.Run:
    return replace(run, stages=[{**stage, "epochs": count} for stage, count in zip(run.stages, epochs)])


# ------------------------------------------------------------------------------------------ the plan
def check_extra(extra: list[str]) -> None:
    for word in extra:
        name = word.split("=", 1)[0]
        if name[2:] in SET_BY_COMPARISON:
            raise UserError(
                f"-- {name}: set by the comparison (the budget sets each stage's epochs; each arm trains in OUT/<arm>)"
            )


def plan_arm(arm: Arm, output_dir: Path, extra: list[str], scripts: dict, data: dict, warnings: list[str], kind: str):
    """The arm's stages with their declared epochs and their costs: an ArmPlan whose epochs the budget sets next."""
    if arm.run.script not in scripts:
        scripts[arm.run.script] = ScriptInfo(arm.run.script)
    info = scripts[arm.run.script]
    folder = output_dir / arm.name
    teacher = teacher_path(arm)
    words = [*extra, "--output-dir", str(folder)]
    try:
        jobs = chain.plan_stages(arm.run, 1, len(arm.run.stages), teacher, words, info.flags)
    except UserError as error:
        raise UserError(f"arm '{arm.name}': {error}") from None
    costs = []
    for job in jobs:
        args = stage_args(info.flags, f"{arm.run.where}: stage {job.number}", job.flags, warnings)
        key = (args.dataset, data_dir_of(args))
        if key not in data:
            data[key] = DataInfo(*key)
        cost = stage_cost(job.experiment_id, args, info.profiles, data[key], arm.run.kind.student)
        if kind == "wall-time":
            cost = replace(
                cost, seconds_per_epoch=probe_seconds(args, cost, data[key].classes.num_classes, data[key].val_images)
            )
        costs.append(cost)
    jobscript = next(name for name, student in chain.JOBSCRIPTS.items() if student == arm.run.kind.student)
    declared = [int(stage["epochs"]) for stage in arm.run.stages]
    return ArmPlan(arm, jobscript, folder, arm.run, jobs, costs, declared, 0.0, teacher)


def plan_comparison(comparison: Comparison, output_dir: Path, extra: list[str]) -> Plan:
    """Every arm's stages, costs and budget epochs (nothing is run or written)."""
    check_extra(extra)
    kind = comparison.budget.kind
    scripts: dict = {}
    data: dict = {}
    warnings: list[str] = []
    arms = [plan_arm(arm, output_dir, extra, scripts, data, warnings, kind) for arm in comparison.arms]
    if comparison.budget.reference is not None:
        reference = next(arm for arm in arms if arm.name == comparison.budget.reference)
        per, fixed = per_epoch(reference.costs, kind)
        budget = sum(e * c + f for e, c, f in zip(reference.epochs, per, fixed))
    else:
        budget = comparison.budget.amount * (1e12 if kind == "compute" else 1.0)
    unit = "TFLOP" if kind == "compute" else "s"
    for arm in arms:
        per, fixed = per_epoch(arm.costs, kind)
        if arm.name == comparison.budget.reference:
            arm.planned = budget
        else:
            arm.epochs, arm.planned = fit_epochs(arm.epochs, per, fixed, budget)
            check_within(f"{comparison.where}: arm '{arm.name}'", arm.planned, budget, unit, arm.epochs)
        arm.run = with_epochs(arm.run, arm.epochs)
        words = [*extra, "--output-dir", str(arm.output_dir)]
        arm.jobs = chain.plan_stages(arm.run, 1, len(arm.run.stages), arm.teacher, words, scripts[arm.run.script].flags)
    return Plan(comparison, output_dir, budget, arms, warnings)


def write_plan(plan: Plan) -> Path:
    """OUT/plan.json; an existing plan of another comparison (or other epochs or flags) is refused, the same plan
    kept (a rerun resumes the arms' stages)."""
    from training.files import save_bytes

    path = plan.output_dir / PLAN_FILE
    content = plan.to_dict()
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(content)):
            raise UserError(
                f"{path}: {plan.output_dir} holds another plan (another comparison, budget, epochs or flags); "
                f"expected the same plan to resume it: use another --output-dir, or delete the folder"
            )
        return path
    save_bytes((json.dumps(content, indent=1) + "\n").encode("utf-8"), path)
    return path


def read_plan(output_dir: Path) -> dict:
    path = Path(output_dir) / PLAN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such file (expected the folder of a comparison: python -m training.compare "
            f"CONFIG --output-dir {output_dir})"
        ) from None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read it ({error})") from None
