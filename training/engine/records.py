"""What a stage writes, in one place: each epoch's files in their one order, the log lines, W&B, the model card and
the durations row of a finished stage.

Where (`StagePaths`; `--output-dir`, the current folder by default, roots all three folders):
  models/<id>.pth                 the best epoch by validation mIoU, a plain state_dict (what the next stage loads)
  models/<id>.json                its model card (training/models/card.py), written right after it
  checkpoints/<id>/state.pth      the resumable state (training/engine/state.py)
  checkpoints/<id>/history.csv    one row per epoch with every logged value (training/engine/history.py)
  checkpoints/<id>/preview-epoch-NNN.png   image | ground truth | prediction at each new best
  measurements/durations.csv      one row per finished stage (columns in measurements/README.md)

WRITE ORDER of an epoch (`write_epoch`; only the main process writes, every file atomically):
  best model -> its card -> preview -> state -> history row,   then the log line and W&B.
The best model before the state: a kill between them leaves the state of the epoch before, whose rerun redoes this
epoch and writes the same model again. The history row after the state: a failed state write leaves the history as
it was, and a row of an epoch the state does not hold is dropped when the stage starts again (history.truncate).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from training.data.dataset import IGNORE_INDEX
from training.engine import history
from training.engine.state import result_args, save_state, state_to_save
from training.engine.tracking import Tracker
from training.errors import EXIT_PREEMPTED, UserError
from training.evaluation.scoring import describe_scoring
from training.evaluation.visualize import png_bytes, preview_grid
from training.files import append_csv_row, save_bytes, save_torch
from training.metrics import ConfusionMatrix, format_iou_table
from training.models.auxiliary import without_aux_heads
from training.models.card import git_commit, profile_entry, size_text, write_card
from training.runtime import distributed

CODE = Path(__file__).resolve().parents[2]  # the checkout whose commit the card records


@dataclass(frozen=True)
class StagePaths:
    """Where the files of stage `experiment_id` go, under `root` (--output-dir)."""

    root: Path
    experiment_id: str

    @property
    def model(self) -> Path:
        return self.root / "models" / f"{self.experiment_id}.pth"

    @property
    def state_dir(self) -> Path:
        return self.root / "checkpoints" / self.experiment_id

    @property
    def state(self) -> Path:
        return self.state_dir / "state.pth"

    @property
    def history(self) -> Path:
        return history.history_path(self.state_dir)

    @property
    def measurements(self) -> Path:
        return self.root / "measurements"

    @property
    def durations(self) -> Path:
        return self.measurements / "durations.csv"

    def preview(self, epoch: int) -> Path:
        return self.state_dir / f"preview-epoch-{epoch:03d}.png"


# ----------------------------------------------------------------------------------------------- one epoch's files
@dataclass(frozen=True)
class Writers:
    """The file writes of an epoch (tests replace them to watch the order)."""

    model: Callable = save_torch  # (state_dict, path)
    card: Callable = write_card  # (model path, card)
    preview: Callable = save_bytes  # (png bytes, path)
    state: Callable = save_torch  # (state, path)
    history: Callable = history.record_epoch  # (path, row)


@dataclass
class EpochFiles:
    """What one finished epoch writes; `best_model`, `card` (and `preview_png`) only when it is a new best."""

    epoch: int
    state: dict
    history_row: dict
    best_model: dict | None = None
    card: dict | None = None
    preview_png: bytes | None = None


def write_epoch(files: EpochFiles, paths: StagePaths, writers: Writers = Writers()) -> None:
    """The WRITE ORDER (see the module's docstring): best model, card, preview, state, history row."""
    if files.best_model is not None:
        writers.model(files.best_model, paths.model)
        writers.card(paths.model, files.card)
        if files.preview_png is not None:
            writers.preview(files.preview_png, paths.preview(files.epoch))
    writers.state(files.state, paths.state)
    writers.history(paths.history, files.history_row)


# ----------------------------------------------------------------------------------------------- the model card
def figures(matrix: torch.Tensor | None) -> dict:
    """mIoU, mean Dice, pixel accuracy of a saved confusion matrix (nan without one)."""
    scores = ConfusionMatrix(matrix.shape[0] if matrix is not None else 1, IGNORE_INDEX)
    if matrix is not None:
        scores.matrix = matrix.to(torch.int64)
    values = scores.compute()
    return {k: values[k] for k in ("miou", "mean_dice", "pixel_accuracy")}


def _finite(values: dict) -> dict:
    """JSON has no NaN: an undefined figure is null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _label(args, *names: str):
    """The run or stage a chain passes (the first of `names` that the arguments have), else None."""
    return next((getattr(args, name) for name in names if getattr(args, name, None) is not None), None)


def model_card(stage, commit: str | None) -> dict:
    """The card of the stage's best model (keys: training/models/card.py), its last epoch as the stage has it."""
    args, progress = stage.args, stage.progress
    scoring = (
        "at full resolution: the labels' own size, logits upsampled bilinearly in fp32 (the benchmark's protocol)"
        if stage.val_resolution == "full"
        else f"at the profile's image size {'x'.join(map(str, stage.profile.image_size))} (labels resized nearest; "
        f"not comparable with published figures)"
    )
    card = {
        "experiment_id": args.experiment_id,
        "script": stage.script,
        "arch": getattr(args, "arch", "fast_scnn"),
        "run": _label(args, "run", "run_name"),
        "stage": _label(args, "stage", "stage_number"),
        "profile": profile_entry(stage.profile),
        "native_size": size_text(stage.native_size),
        "classes": stage.classes.to_dict(),  # the data set's (--dataset): the tools need no class flag
        "args": result_args(args),
        "init_from": stage.inputs.get("init_from"),
        "schedule": stage.schedule,  # training/engine/schedule.py: where the run's lr schedule is at this stage
        "test_resolution": progress.test_resolution,
        "best": _finite({"epoch": progress.best_epoch, **figures(progress.best_matrix)}),
        "last": _finite(progress.last_metrics) if progress.last_metrics else None,
        "protocol": f"val split ({len(stage.val_set)} images), val_resolution {stage.val_resolution}: mIoU, mean "
        f"Dice and pixel accuracy scored {scoring}",
        "git_commit": commit,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if "teacher" in stage.inputs:
        card["teacher"] = stage.inputs["teacher"]
    return card


# ----------------------------------------------------------------------------------------------- the stage's records
def train_means(sums: dict) -> dict:
    """The epoch's mean of each loss part, named train_*."""
    steps = max(sums.get("steps", 0), 1)
    return {
        f"train_{k}" if not k.startswith("train_") else k: v / steps
        for k, v in sums.items()
        if k not in ("steps", "skipped_steps")
    }


def _silent(*_args, **_kwargs) -> None:
    pass


class Records:
    """The log, W&B and the files of one run of a stage; on other processes than the main one, nothing."""

    def __init__(self, stage):
        self.stage, self.paths = stage, stage.paths
        self.log = print if stage.main else _silent
        self.scoring = describe_scoring(stage.val_resolution, stage.profile)
        self.commit = git_commit(CODE) if stage.main else None
        self.tracker: Tracker | None = None

    def card(self) -> dict:
        return model_card(self.stage, self.commit)

    def restore_missing_model(self) -> None:
        """models/<id>.pth gone (deleted, moved) while the saved state has a best epoch: write it again from the
        state's copy of the best weights (a state from before that copy: from its last weights if they are the
        best's), else refuse naming the command that trains the stage again."""
        stage, progress, paths = self.stage, self.stage.progress, self.paths
        if stage.saved is None or progress.best_epoch < 0 or paths.model.exists():
            return
        weights = progress.best_weights
        if weights is None and progress.best_epoch == progress.epoch and progress.step == 0:
            weights = without_aux_heads(stage.model.state_dict())
        if weights is None:
            raise UserError(
                f"{paths.model}: missing, and {paths.state} (written before states kept the best epoch's weights) "
                f"holds epoch {progress.epoch + (progress.step > 0)}'s weights, not those of the best epoch "
                f"{progress.best_epoch}; pass --restart to train the stage again"
            )
        if stage.main:
            save_torch(weights, paths.model)
            write_card(paths.model, self.card())
        self.log(
            f"{paths.model} was missing: restored the best epoch ({progress.best_epoch}, mIoU "
            f"{progress.best_miou:.4f}) from {paths.state}",
            flush=True,
        )

    def already_complete(self) -> dict:
        """A stage whose state holds all its epochs: its card (the final epoch as last) and one line."""
        stage, progress = self.stage, self.stage.progress
        if stage.main and self.paths.model.exists():
            write_card(self.paths.model, self.card())
        self.log(
            f"{stage.args.experiment_id}: already complete ({progress.epoch} epochs, best mIoU "
            f"{progress.best_miou:.4f} at epoch {progress.best_epoch}); use --restart to train it again",
            flush=True,
        )
        distributed.shutdown()
        return {"best_miou": progress.best_miou, "best_epoch": progress.best_epoch, "epochs_run": 0}

    def start(self) -> None:
        """The stage's header lines, the history cut to the state, W&B, the clock, and (on a fresh start) the
        provisional state: from now on models/<id>.pth is this run's (a requeue after a crash resumes it)."""
        stage, args, progress = self.stage, self.stage.args, self.stage.progress
        self.log(
            f"{stage.script}: {args.experiment_id} | {stage.profile.describe()} | {len(stage.train_set)} train / "
            f"{len(stage.val_set)} val images from {args.data_dir} ({stage.classes.dataset}, "
            f"{stage.classes.num_classes} classes) | device {stage.device} x "
            f"{stage.dist.world_size} | batch {args.batch_size} per process, {stage.steps} steps/epoch",
            flush=True,
        )
        if stage.saved is not None:
            self.log(
                f"resume: {self.paths.state} at epoch {progress.epoch + 1}, step {progress.step} "
                f"(best mIoU so far {progress.best_miou:.4f})",
                flush=True,
            )
        init = f"weights from {args.init_from}" if args.init_from.lower() != "none" else "random"
        self.log(f"init: {init}" + (f"; {stage.aux_line}" if stage.aux_line else ""), flush=True)
        self.log(stage.recipe_line, flush=True)
        if stage.schedule_line:
            self.log(stage.schedule_line, flush=True)
        if stage.main:  # rows of epochs the state does not hold (a kill before its save, or --restart) are redone
            history.truncate(self.paths.history, progress.epoch, progress.history_row)
        config = vars(args) | {"script": stage.script}
        self.tracker = Tracker(args.experiment_id, config, enabled=stage.main, resume_id=progress.wandb_id)
        progress.wandb_id = self.tracker.run_id or progress.wandb_id
        progress.started = time.perf_counter()
        if stage.saved is None:
            save_state(stage)
            stage.provisional_state = True

    def epoch(self, metrics: dict, sums: dict, preview, improved: bool, seconds: float, throughput: float) -> None:
        """The records of the epoch just validated (`stage.progress` already counts it)."""
        stage = self.stage
        stage.provisional_state = False  # the state written below vouches for the model written before it
        if not stage.main:
            return
        means = train_means(sums)
        values = self._values(metrics, means)
        self._write(values, {"seconds": seconds, "images_per_s": throughput}, preview, improved)
        self.log(self._epoch_line(metrics, means, sums, improved, seconds, throughput), flush=True)
        self._log_best(metrics, values, preview, improved)

    def test_resolution(self, metrics: dict, preview, improved: bool, seconds: float) -> None:
        """The records of a test-resolution stage's start (epoch 0): the model it starts from, scored before and
        after the BatchNorm recalibration (`stage.progress.test_resolution`)."""
        stage, record = self.stage, self.stage.progress.test_resolution
        stage.provisional_state = False
        if not stage.main:
            return
        values = self._values(metrics, {})
        if stage.args.epochs == 0:  # no step: the lr where the starting model's schedule ended (history continues)
            ended = (stage.schedule or {}).get("lr_end")
            if ended is None:
                del values["learning_rate"]
            else:
                values["learning_rate"] = ended
        if record["miou_after"] is not None:
            values["valid_miou_before_recalibration"] = record["miou_before"]
        values["bn_recalibrate_batches"] = record["bn_recalibrate"]
        self._write(values, {"seconds": seconds}, preview, improved)
        self.log(test_resolution_line(record, stage.val_resolution), flush=True)
        self._log_best(metrics, values, preview, improved)

    def _values(self, metrics: dict, means: dict) -> dict:
        """The logged values of the model as validated now: the epoch, lr, training means, validation scores."""
        stage = self.stage
        return {
            "epoch": stage.progress.epoch,
            "learning_rate": stage.optimizer.param_groups[0]["lr"],
            **means,
            "valid_loss": metrics["valid_loss"],
            "valid_miou": metrics["miou"],
            "valid_mean_dice": metrics["mean_dice"],
            "valid_pixel_accuracy": metrics["pixel_accuracy"],
            **{f"valid_iou/{n}": v for n, v in zip(stage.classes.names, metrics["iou"]) if not math.isnan(v)},
        }

    def _write(self, values: dict, timing: dict, preview, improved: bool) -> None:
        """The epoch's files, in their order (`write_epoch`)."""
        stage, progress = self.stage, self.stage.progress
        progress.history_row = {
            "profile": stage.profile.name,
            "val_resolution": stage.val_resolution,
            **{k: v if isinstance(v, (int, str)) else float(v) for k, v in values.items()},  # plain: weights_only
            **timing,
        }
        write_epoch(
            EpochFiles(
                epoch=progress.epoch,
                state=state_to_save(stage),  # it holds the history row too: a kill before the next write loses none
                history_row=progress.history_row,
                best_model=progress.best_weights if improved else None,
                card=self.card() if improved else None,
                preview_png=png_bytes(self._preview(preview)) if improved and preview is not None else None,
            ),
            self.paths,
        )

    def _log_best(self, metrics: dict, values: dict, preview, improved: bool) -> None:
        if improved:
            self.log(format_iou_table(metrics["iou"], self.stage.classes.names), flush=True)
            if preview is not None:
                values["predictions"] = self.tracker.image(self._preview(preview), "image | label | prediction")
        self.tracker.log({k: v for k, v in values.items() if v is not None})

    def _preview(self, preview):
        """image | ground truth | prediction, in the data set's colours."""
        return preview_grid(*preview, palette=self.stage.classes.palette_table())

    def _epoch_line(self, metrics, means, sums, improved, seconds, throughput) -> str:
        skipped = sums.get("skipped_steps", 0)
        return (
            f"epoch {self.stage.progress.epoch}/{self.stage.args.epochs} | "
            + " | ".join(f"{k} {v:.4f}" for k, v in means.items())
            + f" | valid_loss {metrics['valid_loss']:.4f} | mIoU {metrics['miou']:.4f} | mean Dice "
            f"{metrics['mean_dice']:.4f} | pixel acc {metrics['pixel_accuracy']:.4f} | val at {self.scoring} | "
            f"{seconds:.1f} s | {throughput:.1f} img/s"
            + (f" | skipped {int(skipped)} non-finite steps" if skipped else "")
            + (" | new best" if improved else "")
        )

    def stopped(self, signal_name: str) -> None:
        """A stop signal: the state of this step, and the line that says how to go on."""
        save_state(self.stage)
        progress = self.stage.progress
        self.log(
            f"stopped by {signal_name} at epoch {progress.epoch + 1}, step {progress.step}; state saved to "
            f"{self.paths.state}: run the same command to resume (exit {EXIT_PREEMPTED})",
            flush=True,
        )

    def finish(self, epochs_run: int) -> dict:
        """A finished stage: the card with its final epoch as last, the durations row, the last line, W&B."""
        stage, progress = self.stage, self.stage.progress
        total = progress.elapsed_now()
        best, last = figures(progress.best_matrix), progress.last_metrics or figures(None)
        if stage.main:
            if self.paths.model.exists():
                write_card(self.paths.model, self.card())
            append_csv_row(self.paths.durations, durations_row(stage, total))
            self.log(
                f"done: {stage.args.experiment_id} best mIoU {progress.best_miou:.4f} at epoch {progress.best_epoch} "
                f"(mean Dice {best['mean_dice']:.4f}, pixel acc {best['pixel_accuracy']:.4f}); last epoch "
                f"{progress.epoch}: mIoU {last['miou']:.4f} (mean Dice {last['mean_dice']:.4f}, pixel acc "
                f"{last['pixel_accuracy']:.4f}); val at {self.scoring} -> {self.paths.model}; {total:.0f} s in all",
                flush=True,
            )
            if progress.test_resolution is not None:
                self.log(test_resolution_line(progress.test_resolution, stage.val_resolution, progress), flush=True)
            self.tracker.summary(
                {
                    "best_miou": progress.best_miou,
                    "best_epoch": progress.best_epoch,
                    "best_mean_dice": best["mean_dice"],
                    "last_miou": last["miou"],
                    "last_mean_dice": last["mean_dice"],
                    "val_resolution": stage.val_resolution,
                }
            )
        self.close()
        return {"best_miou": progress.best_miou, "best_epoch": progress.best_epoch, "epochs_run": epochs_run}

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
        distributed.shutdown()


def test_resolution_line(record: dict, val_resolution: str, progress=None) -> str:
    """One line: a test-resolution stage's validation mIoU before and after its BatchNorm recalibration (and, at the
    stage's end, its best)."""
    size = f"{'whole' if record['whole_images'] else 'crops'} {record['input_size']}"
    line = f"test resolution ({size}): validation mIoU {record['miou_before']:.4f} before"
    if record["miou_after"] is not None:
        line += f", {record['miou_after']:.4f} after BatchNorm recalibration on {record['bn_recalibrate']} batches"
    if progress is not None:
        line += f"; best {progress.best_miou:.4f} at epoch {progress.best_epoch}"
    return line + f" (val at {val_resolution} resolution)"


def durations_row(stage, total: float) -> dict:
    """The stage's row of measurements/durations.csv (columns documented in measurements/README.md)."""
    args, progress, profile = stage.args, stage.progress, stage.profile
    last = progress.last_metrics.get("miou", math.nan)
    return {
        "experiment_id": args.experiment_id,
        "script": stage.script,
        "profile": profile.name,
        "image_size": "x".join(map(str, profile.image_size)),
        "patch_size": "x".join(map(str, profile.patch_size)),
        "epochs": args.epochs,
        "wall_time_s": f"{total:.1f}",
        "s_per_epoch": f"{total / args.epochs:.2f}" if args.epochs else "",
        "device": distributed.device_name(stage.device) if stage.device.type == "cuda" else "cpu",
        "processes": stage.dist.world_size,
        "best_miou": f"{progress.best_miou:.6f}",
        "best_epoch": progress.best_epoch,
        "val_resolution": stage.val_resolution,
        "last_miou": f"{last:.6f}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
