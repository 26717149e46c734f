"""checkpoints/<id>/state.pth: the resumable state of a stage, the checks a resume must pass, save and restore.

The state holds the model, optimizer, scheduler and AMP scaler, where the stage is (`Progress`: epoch, step, best
epoch and its weights, last metrics, time spent), the arguments that change the result, and what the stage started
from. Only the main process writes it, atomically (training/files.py). The same command resumes from it; a resume
continues only what that command would have produced, so it is refused (one `error:` line, exit 2, nothing written)
when:
  - an argument that changes the weights differs (all but RESULT_INDEPENDENT; --epochs too unless the schedule is
    constant);
  - the data set differs: not its path (a data set moved, or staged to node-local scratch by a job, resumes) but its
    files: the relative paths and byte sizes of every image and label of the train and val splits; and its classes
    (a folder data set's classes.json edited: other names, colours or void);
  - a model the stage started from changed: the content hash (sha256) of --previous-model-path (or
    --previous-student-model-path) and of the distillation teacher is recorded when the stage starts; a file with
    other bytes at that path is refused (--restart trains the stage again from it). A file no longer there is not
    checked: a resume does not read it;
  - the number of processes or the steps per epoch differ (the schedule and the data position count those steps).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from training.data.classes import CITYSCAPES, ClassSet
from training.errors import UserError
from training.files import save_torch
from training.models.auxiliary import aux_heads_state, without_aux_heads
from training.models.card import content_hash

STATE_VERSION = 1
# Arguments that do not change the trained weights: a resume may change them freely (the data set's path too: its
# files are compared instead; run and stage are labels of the model card).
RESULT_INDEPENDENT = {
    "num_workers",
    "restart",
    "debug",
    "no_cache",
    "cache_dir",
    "device",
    "previews",
    "experiment_id",
    "skip_nonfinite",
    "epochs",
    "compile",
    "data_dir",
    "output_dir",
    "run",
    "stage",
    "run_name",
    "stage_number",
}


def result_args(args) -> dict:
    """The arguments that change the trained weights, by name."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in RESULT_INDEPENDENT}


def defaults_before(saved_args: dict) -> dict:
    """The values of the flags added since states were first written, for a state saved before them (what the
    stage then trained with): the schedule across stages, --lr-scaling, regularisation, the test-resolution stage,
    DIST's weights."""
    augment = saved_args.get("augment", "original")
    return {
        "schedule_span": None,
        "warmup_fraction": 0.0,
        "lr_scaling": "none",
        "reference_batch_size": 32,
        "scale_range": "0.5,2.0" if augment == "mmseg" else "1.0,1.0",
        "photometric_strength": 1.0,
        "dropout": 0.1 if saved_args.get("arch", "fast_scnn") == "fast_scnn" else None,
        "whole_images": False,
        "bn_recalibrate": 0,
        "dist_beta": 1.0,
        "dist_gamma": 1.0,
    }


def differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


@dataclass
class Progress:
    """Where a stage is and what it has reached: the part of the state that is not a torch object's."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps of the current epoch done
    best_miou: float = -math.inf
    best_epoch: int = -1
    elapsed: float = 0.0  # seconds of earlier runs of this stage
    epoch_sums: dict = field(default_factory=dict)  # loss sums of the current epoch so far
    wandb_id: str | None = None
    best_matrix: torch.Tensor | None = None  # confusion matrix (rows ground truth) of the best epoch
    best_aux_heads: dict | None = None  # the best epoch's auxiliary heads, for the next stage
    best_weights: dict | None = None  # the best epoch's model (what models/<id>.pth holds), on the CPU
    last_metrics: dict = field(default_factory=dict)  # {epoch, miou, mean_dice, pixel_accuracy} of the last epoch
    history_row: dict = field(default_factory=dict)  # the last epoch's row of history.csv (history.truncate)
    started: float | None = None  # time.perf_counter() when this run's epochs started
    # a test-resolution stage's start (--whole-images, --bn-recalibrate): {miou_before, miou_after, batches, ...}
    test_resolution: dict | None = None

    def elapsed_now(self) -> float:
        return self.elapsed + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def end_epoch(self, metrics: dict, model: nn.Module) -> bool:
        """Count the epoch validated with `metrics` as done; keep it as the best if it is. Returns whether it is."""
        self.epoch += 1
        self.step, self.epoch_sums = 0, {}
        return self.keep_if_best(metrics, model)

    def keep_if_best(self, metrics: dict, model: nn.Module) -> bool:
        """`metrics` are those of the model as it is now, at `epoch` (0: a test-resolution stage's start, before its
        first epoch): the last metrics, and the best if they are. Returns whether they are."""
        improved = metrics["miou"] > self.best_miou
        self.last_metrics = {"epoch": self.epoch, **{k: metrics[k] for k in ("miou", "mean_dice", "pixel_accuracy")}}
        if improved:
            self.best_miou, self.best_epoch = metrics["miou"], self.epoch
            self.best_matrix = metrics["confusion_matrix"]
            weights = model.state_dict()
            self.best_aux_heads = aux_heads_state(weights) or None
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in without_aux_heads(weights).items()}
        return improved


# ----------------------------------------------------------------------------------------------- what it started from
def init_flag(args) -> str:
    """The flag that names the starting weights in this script."""
    return "--previous-student-model-path" if hasattr(args, "trained_teacher_model_path") else "--previous-model-path"


INPUT_FLAGS = {"init_from": init_flag, "teacher": lambda _args: "--trained-teacher-model-path"}


def input_models(args) -> dict[str, dict]:
    """{'init_from' | 'teacher': {path, sha256}} of the model files the stage reads (those that exist: a missing
    one is refused later, by the loader that needs it, with its own message)."""
    paths = {"init_from": args.init_from, "teacher": getattr(args, "trained_teacher_model_path", "none")}
    found = {}
    for name, path in paths.items():
        if str(path).lower() not in ("", "none") and Path(path).expanduser().is_file():
            found[name] = {"path": str(path), "sha256": content_hash(Path(path).expanduser())}
    return found


def _check_inputs(state: dict, args, state_path: Path) -> None:
    for name, saved in (state.get("inputs") or {}).items():
        path = Path(saved["path"]).expanduser()
        if not path.is_file():
            continue
        now = content_hash(path)
        if now != saved["sha256"]:
            raise UserError(
                f"{INPUT_FLAGS[name](args)} {saved['path']}: changed since {state_path} started from it (sha256 "
                f"{saved['sha256'][:12]}... -> {now[:12]}...): this stage's weights come from the old file; pass "
                f"--restart to train the stage again from the new one, or put the old file back"
            )


# ----------------------------------------------------------------------------------------------- the data set
def data_fingerprint(root: str | Path, files: list) -> dict:
    """What identifies a split's files wherever the data set lies: their number, total bytes, and the sha256 of the
    sorted lines 'relative path<TAB>size'."""
    root = Path(root)
    lines = []
    for file in files:
        path = Path(file)
        relative = path.relative_to(root) if path.is_relative_to(root) else path
        lines.append(f"{relative.as_posix()}\t{os.stat(path).st_size}")
    lines.sort()
    total = sum(int(line.rsplit("\t", 1)[1]) for line in lines)
    return {"files": len(lines), "bytes": total, "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}


def check_data(state: dict, fingerprint: dict, state_path: Path) -> None:
    """Refuse a resume on other data files than the saved state's (a state without a fingerprint: its path was
    compared with the arguments)."""
    saved = state.get("data")
    if not saved:
        return
    for split in ("train", "val"):
        before, now = saved.get(split), fingerprint[split]
        if before != now:
            same_totals = (before or {}).get("files") == now["files"] and (before or {}).get("bytes") == now["bytes"]
            raise UserError(
                f"{state_path}: the data set's {split} split changed since the state was saved "
                f"({(before or {}).get('files')} files, {(before or {}).get('bytes')} bytes -> {now['files']} files, "
                f"{now['bytes']} bytes{'; the same totals, other names or sizes' if same_totals else ''}); resume "
                f"with the data the stage started with, or --restart to start afresh"
            )


def check_classes(state: dict, classes: ClassSet, state_path: Path) -> None:
    """Refuse a resume on a data set of other classes than the saved state's (`ClassSet.to_dict()`; a state without
    the entry was written before other data sets existed: Cityscapes)."""
    saved = state.get("classes") or CITYSCAPES.to_dict()
    if saved != classes.to_dict():
        raise UserError(
            f"{state_path}: saved for the classes of {saved.get('dataset')} ({len(saved.get('classes', []))}: "
            f"{', '.join(saved.get('classes', []))[:80]}), but the data set now has {classes.dataset}'s "
            f"({classes.num_classes}: {', '.join(classes.names)[:80]}); resume with the data the stage started with, "
            f"or --restart to start afresh"
        )


def check_resume_shape(state: dict, state_path: Path, world_size: int, steps: int) -> None:
    """Refuse a resume whose steps differ from the saved ones: the schedule and the data position would not fit."""
    saved = (state.get("world_size"), state.get("steps_per_epoch"))
    if saved == (None, None):  # a state written before they were recorded
        return
    if saved != (world_size, steps):
        raise UserError(
            f"{state_path}: saved by {saved[0]} process(es) with {saved[1]} steps per epoch, but "
            f"this run has {world_size} process(es) with {steps} steps per epoch; "
            f"resume with the same number of processes (and training images), or --restart to "
            f"start afresh"
        )


# ----------------------------------------------------------------------------------------------- read, save, restore
def read_state(path: Path, args) -> dict | None:
    """The saved state this stage resumes from, checked against the arguments and the models it started from;
    None for a fresh start (no state, or --restart)."""
    if args.restart or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"{path}: unreadable resumable state ({type(error).__name__}); use --restart to start the stage afresh"
        ) from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise UserError(f"{path}: not a state file of this version; use --restart to start afresh")
    current = result_args(args)
    saved_args = {k: v for k, v in state["args"].items() if k not in RESULT_INDEPENDENT}
    saved_args.setdefault("val_resolution", "profile")  # states written before full-resolution scoring
    saved_args.setdefault("dataset", "cityscapes")  # states written before --dataset
    for name, value in defaults_before(saved_args).items():  # states written before these flags existed
        if name in current:
            saved_args.setdefault(name, value)
    if "data" not in state:  # a state written before the data fingerprint: the path is all there is to compare
        saved_args["data_dir"], current["data_dir"] = state["args"].get("data_dir"), args.data_dir
    if args.lr_schedule != "constant" and state["epochs"] != args.epochs:
        saved_args["epochs"], current["epochs"] = state["epochs"], args.epochs
    changed = differences(saved_args, current)
    if changed:
        raise UserError(
            f"{path}: cannot resume with different arguments ({'; '.join(changed)}); "
            f"use the original arguments, or --restart to start afresh"
        )
    _check_inputs(state, args, path)
    return state


def state_to_save(stage) -> dict:
    """The resumable state of `stage` (a training.engine.build.Stage) as it is now."""
    progress, args = stage.progress, stage.args
    optional = {
        "best_confusion_matrix": progress.best_matrix,
        "best_aux_heads": progress.best_aux_heads or None,
        "best_model": progress.best_weights,
    }
    return {
        "version": STATE_VERSION,
        "script": stage.script,
        "args": result_args(args),
        "epochs": args.epochs,
        "epoch": progress.epoch,
        "step": progress.step,
        "world_size": stage.dist.world_size,
        "steps_per_epoch": stage.steps,
        "model": stage.model.state_dict(),
        "optimizer": stage.optimizer.state_dict(),
        "scheduler": stage.scheduler.state_dict(),
        "scaler": stage.scaler.state_dict() if stage.scaler.is_enabled() else {},
        "best_miou": progress.best_miou,
        "best_epoch": progress.best_epoch,
        "elapsed": progress.elapsed_now(),
        "epoch_sums": progress.epoch_sums,
        "last_metrics": progress.last_metrics,
        "history_row": progress.history_row,
        "init_from": args.init_from,
        "inputs": stage.inputs,
        "data_dir": args.data_dir,
        "data": stage.data,
        "classes": stage.classes.to_dict(),
        "wandb_id": progress.wandb_id or "",
        "schedule": stage.schedule,
        "test_resolution": progress.test_resolution,
        **{key: value for key, value in optional.items() if value is not None},
    }


def save_state(stage) -> None:
    """Write the state now (main process only). From here on it is no longer the provisional one."""
    stage.provisional_state = False
    if stage.main:
        save_torch(state_to_save(stage), stage.paths.state)


def restore(stage, state: dict) -> None:
    """Put `stage` where `state` left it."""
    stage.model.load_state_dict(state["model"])
    stage.optimizer.load_state_dict(state["optimizer"])
    stage.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        stage.scaler.load_state_dict(state["scaler"])
    stage.progress = Progress(
        epoch=state["epoch"],
        step=state["step"],
        best_miou=state["best_miou"],
        best_epoch=state["best_epoch"],
        elapsed=state["elapsed"],
        epoch_sums=dict(state["epoch_sums"]),
        wandb_id=state.get("wandb_id") or None,
        best_matrix=state.get("best_confusion_matrix"),
        best_aux_heads=state.get("best_aux_heads"),
        best_weights=state.get("best_model"),
        last_metrics=dict(state.get("last_metrics") or {}),
        history_row=dict(state.get("history_row") or {}),
        test_resolution=state.get("test_resolution"),
    )
