"""A comparison file (`comparisons/<name>.toml`, read with tomllib): arms, each a run, and the budget they share.

    description = "run 1's curriculum against one stage at the top profile, at equal training compute"
    budget = { kind = "compute", reference = "single" }  # or tflop = 500; kind = "wall-time" with seconds = 3600
    flags = { data-dir = "data/cityscapes" }              # flags of every arm's stages (an arm's own run wins)

    [[arms]]
    name = "curriculum"
    run = 1                                               # a run file: runs/01.toml (its flags may be added to)

    [[arms]]
    name = "single"                                       # or a run written here, in the run files' schema
    script = "train.py"
    stages = [{ profile = 5, epochs = 100 }]

An arm's stage epochs give the proportions between its stages; the budget scales them (training/compare/budget.py).
`reference = ARM` keeps that arm's epochs as declared and makes its cost the budget. Paths in flags are relative to
the repository (where the stages run), as in run files.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from training.cluster import runs as registry
from training.errors import UserError

KEYS = {"description": str, "budget": dict, "flags": dict, "arms": list}
BUDGET_KINDS = {"compute": "tflop", "wall-time": "seconds"}  # kind -> the key of its amount
ARM_ONLY_KEYS = {"name", "run", "teacher"}  # beside the run files' keys (an inline run)
ARM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# flags the comparison sets itself: the epochs (from the budget) and each arm's output folder
SET_BY_COMPARISON = ("epochs", "output-dir")


@dataclass(frozen=True)
class Budget:
    kind: str  # "compute" (training TFLOP) or "wall-time" (seconds of the arm's epochs)
    reference: str | None = None  # the arm whose declared epochs set the budget
    amount: float | None = None  # or the budget itself: TFLOP, or seconds

    @property
    def unit(self) -> str:
        return "TFLOP" if self.kind == "compute" else "s"

    def describe(self) -> str:
        what = "training compute" if self.kind == "compute" else "wall time"
        size = f"that of arm '{self.reference}' as declared" if self.reference else f"{self.amount:g} {self.unit}"
        return f"equal {what}: {size}"


@dataclass
class Arm:
    name: str
    run: registry.Run  # its stages' epochs as declared (the proportions)
    teacher: str | None = None  # a student's teacher model, when the arm names one
    source: str = ""  # the run file, or "inline"


@dataclass
class Comparison:
    path: Path
    budget: Budget
    arms: list[Arm]
    description: str = ""
    flags: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def where(self) -> str:
        return registry.display_path(self.path)

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)


def load_comparison(path: str | Path, runs_dir: Path | None = None) -> Comparison:
    """The comparison file at `path`, checked: keys, budget, arms and their runs (flag names are checked later,
    against each script's parser, when the arms are planned)."""
    path = Path(path)
    where = registry.display_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{where}: not valid TOML ({error})") from None
    _check_keys(where, data, KEYS, "")
    flags = _comparison_flags(where, data.get("flags", {}))
    arms_data = data.get("arms") or []
    if len(arms_data) < 2 or not all(isinstance(arm, dict) for arm in arms_data):
        raise UserError(f'{where}: expected at least two [[arms]] tables (an arm: name = "..." and a run)')
    needs_registry = any("run" in arm or "teacher-run" in arm for arm in arms_data)
    registry_runs = registry.load_registry(runs_dir) if needs_registry else {}
    arms = [_arm(where, path, index, arm, flags, registry_runs) for index, arm in enumerate(arms_data, start=1)]
    names = [arm.name for arm in arms]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{where}: two arms are named '{name}' (expected each arm's name once)")
    budget = _budget(where, data.get("budget"), names)
    return Comparison(path, budget, arms, data.get("description", ""), flags)


def _check_keys(where: str, data: dict, keys: dict, what: str) -> None:
    for key, value in data.items():
        if key not in keys:
            raise UserError(f"{where}: {what}unknown key '{key}' (expected one of: {', '.join(keys)})")
        expected = keys[key]
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool) and expected is int):
            raise UserError(f"{where}: {what}{key} = {value!r}: expected a {_type_name(expected)}")


def _type_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or a ".join(_type_name(k) for k in kind)
    return {str: "string", int: "whole number", float: "number", dict: "table", list: "list of tables"}[kind]


def _comparison_flags(where: str, flags: dict) -> dict:
    registry._check_flags(where, flags, "flags")
    for name in flags:
        if name in SET_BY_COMPARISON:
            raise UserError(
                f"{where}: flags: '{name}' is set by the comparison (the budget sets the epochs; each arm "
                f"trains in its own folder under the comparison's --output-dir)"
            )
    return dict(flags)


def _budget(where: str, data, names: list[str]) -> Budget:
    expected = 'expected e.g. budget = { kind = "compute", reference = "ARM" } or { kind = "compute", tflop = 500 }'
    if not isinstance(data, dict) or data.get("kind") not in BUDGET_KINDS:
        raise UserError(f"{where}: budget = {data!r}: {expected} (kind: {' or '.join(BUDGET_KINDS)})")
    amount_key = BUDGET_KINDS[data["kind"]]
    _check_keys(where, data, {"kind": str, "reference": str, amount_key: (int, float)}, "budget: ")
    given = [key for key in ("reference", amount_key) if key in data]
    if len(given) != 1:
        raise UserError(
            f'{where}: budget: expected either reference = "ARM" or {amount_key} = N, not '
            f"{'both' if given else 'neither'}"
        )
    if "reference" in data:
        if data["reference"] not in names:
            raise UserError(
                f"{where}: budget: reference = {data['reference']!r}: no such arm (arms: {', '.join(names)})"
            )
        return Budget(data["kind"], reference=data["reference"])
    amount = float(data[amount_key])
    if not amount > 0:
        raise UserError(f"{where}: budget: {amount_key} = {data[amount_key]!r}: expected a positive number")
    return Budget(data["kind"], amount=amount)


def _arm(where: str, path: Path, index: int, data: dict, flags: dict, registry_runs) -> Arm:
    name = data.get("name")
    if not isinstance(name, str) or not ARM_NAME.match(name):
        raise UserError(
            f"{where}: arm {index}: name = {name!r}: expected a name of lower-case letters, digits, - "
            f"and _ (it names the arm's folder)"
        )
    what = f"arm '{name}': "
    run_keys = {key: value for key, value in registry.RUN_KEYS.items() if key != "description"}
    _check_keys(where, data, {"name": str, "run": int, "teacher": str, **run_keys}, what)
    for key in SET_BY_COMPARISON:
        if key in data.get("flags", {}):
            raise UserError(f"{where}: {what}flags: '{key}' is set by the comparison")
    if "run" in data:
        extra = sorted(set(data) - {"name", "run", "teacher", "flags"})
        if extra:
            raise UserError(
                f"{where}: {what}'{extra[0]}' with run = {data['run']}: an arm is a run file or a run "
                f"written here, not both (a run file's arm may add flags = {{...}})"
            )
        if data["run"] not in registry_runs:
            raise UserError(
                f"{where}: {what}run = {data['run']}: no runs/{data['run']:02d}.toml (runs: "
                f"{', '.join(map(str, registry_runs))})"
            )
        base = registry_runs[data["run"]]
        own = registry._check_flags(where, data.get("flags", {}), f"{what}flags")
        run = replace(base, flags={**flags, **base.flags, **own}, stages=[dict(s) for s in base.stages])
        source = base.where
    else:
        table = {key: value for key, value in data.items() if key not in ARM_ONLY_KEYS}
        stages = [dict(stage) for stage in table.get("stages") or [] if isinstance(stage, dict)]
        for number, stage in enumerate(stages, start=1):
            stage.setdefault("experiment-id", f"{name}-{number:02d}")
        if stages:
            table["stages"] = stages
        run = registry.run_from_table(table, path, 0, f"{where}: {what.rstrip(': ')}", name=name)
        run.flags = {**flags, **run.flags}
        if run.teacher_run is not None:
            if run.teacher_run not in registry_runs and "teacher" not in data:
                raise UserError(
                    f"{where}: {what}teacher-run = {run.teacher_run}: no such run file (or give the "
                    f'teacher\'s model: teacher = "models/<id>.pth")'
                )
            run.teacher_of = registry_runs.get(run.teacher_run)
        source = "inline"
    for number, stage in enumerate(run.stages, start=1):
        epochs = stage.get("epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise UserError(
                f"{where}: {what}stage {number}: epochs = {epochs!r}: expected a whole number >= 0 (the "
                f"proportions of the arm's stages; the budget scales them)"
            )
    if not any(stage["epochs"] > 0 for stage in run.stages):
        raise UserError(f"{where}: {what}no stage has epochs > 0 (expected the proportions of its stages)")
    if data.get("teacher") is not None and not run.kind.student:
        raise UserError(f"{where}: {what}teacher = {data['teacher']!r}: {run.script} has no teacher")
    return Arm(name, run, data.get("teacher"), source)
