"""One curriculum stage, shared by every train*.py: set-up, the epoch loop, validation, checkpoints, resume.

A script supplies its parsed arguments, its resolution profile table and `make_loss(device)`, which returns
`loss(logits, images, target) -> (total, {name: value})`; everything else happens here, once.

Files (only the main process writes, always atomically):
  models/<id>.pth                 best epoch by validation mIoU, a plain state_dict (what the next stage loads)
  checkpoints/<id>/state.pth      resumable state: model, optimizer, scheduler, AMP scaler, epoch, step, best mIoU,
                                  the arguments, where the weights came from; the same command resumes from it
  checkpoints/<id>/preview-epoch-NNN.png   image | ground truth | prediction at each new best
  checkpoints/<id>/history.csv    one row per epoch with every logged value (training/engine/history.py)
  measurements/durations.csv      one row per finished stage
Randomness is a function of the seed, epoch and step (see data/dataset.py), so on the CPU a resumed stage ends
exactly where an uninterrupted one would (bit for bit). On CUDA it resumes at the same step with the same data,
but not bit-exactly: cuDNN's benchmark choice of kernels and atomic-add kernels are not deterministic.
A resume needs the same number of processes and steps per epoch as the saved state (both recorded in it): the
schedule and the data position are counted in steps of that size. A fresh start refuses to overwrite an existing
models/<id>.pth that no state vouches for (--restart does); the state is written before the first step.

Test hook: FASTSCNN_TEST_NAN_AT_STEP=N makes the loss of the N-th training step of the stage (1-based, counted over
epochs: epoch e, step s is N = (e - 1) * steps_per_epoch + s) NaN, to test the handling of non-finite losses.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from training.data.dataset import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    CityscapesSegmentation,
    EpochSampler,
    denormalize,
    make_loader,
    num_train_batches_check,
    steps_per_epoch,
    val_transform,
)
from training.data.transforms import train_pipeline
from training.engine import distributed, history
from training.engine.acceleration import amp_dtype, compile_model, prepare_teacher
from training.engine.cli import check_args, get_args_parser
from training.engine.optim import build_optimizer, build_scheduler
from training.engine.recipes import resolve_recipe
from training.engine.step_monitor import CHECK_EVERY, StepMonitor, skip_nonfinite_update
from training.engine.tracking import Tracker
from training.errors import EXIT_PREEMPTED, NonFiniteLossError, UserError
from training.evaluation import scoring as evaluation
from training.evaluation.visualize import png_bytes, preview_grid
from training.files import append_csv_row, check_writable, remove_stale_temporaries, save_bytes, save_torch
from training.metrics import ConfusionMatrix, format_iou_table
from training.models.auxiliary import aux_heads_state, auxiliary_loss, init_aux_heads, without_aux_heads
from training.models.build import build_model, load_weights
from training.profiles import resolve_profile

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]

STATE_VERSION = 1
# Arguments that do not change the trained weights: a resume may change them freely.
RESULT_INDEPENDENT = {
    "num_workers",
    "restart",
    "debug",
    "no_cache",
    "device",
    "previews",
    "experiment_id",
    "skip_nonfinite",
    "epochs",
    "compile",
    "run",  # where the stage belongs in its run file (the chain's --run/--stage): a hand resume may leave them out
    "stage",
}


class StopRequest:
    """SIGTERM/SIGUSR1 (Slurm's warning before a time limit) ask the stage to save and stop after this step;
    a second signal exits at once (the last saved state stays valid), with the preempted exit code once the state
    is saved (an srun step ends its other tasks with SIGTERM when the first one exits)."""

    def __init__(self):
        self.signum = 0
        self.saved = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        if self.signum:
            print(f"second signal {signal.Signals(signum).name}: exiting at once", file=sys.stderr, flush=True)
            os._exit(EXIT_PREEMPTED if self.saved else 128 + signum)
        self.signum = signum
        print(f"{signal.Signals(signum).name} received: saving the state after this step", file=sys.stderr, flush=True)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    # Dropout randomness of a step depends only on where it is in the stage: exact resume without saving RNG streams.
    return (seed * 1_000_003 + epoch * 10_007 + step) * 64 + rank


def _result_args(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in RESULT_INDEPENDENT}


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


class Stage:
    """The state and the steps of one stage; `run_stage` drives it."""

    def __init__(self, args, profiles: dict, make_loss: Callable[[torch.device], LossFn], script: str):
        self.recipe_line = resolve_recipe(args, distributed.detect().world_size)
        check_args(args)
        self.args, self.script = args, script
        self.profile = resolve_profile(args.profile, profiles)
        args.profile = self.profile.name
        args.data_dir = str(Path(args.data_dir).expanduser().resolve())
        if str(args.init_from).lower() != "none":
            args.init_from = str(Path(args.init_from).expanduser())
        self.device = distributed.pick_device(args.device)
        self.dist = distributed.init(self.device.type)
        if self.device.type == "cuda":
            self.device = distributed.cuda_device(self.dist.local_rank)
            torch.backends.cudnn.benchmark = True
        self.main = self.dist.is_main
        if args.batch_size * (self.dist.world_size if args.sync_bn else 1) < 2:
            raise UserError(
                f"--batch-size {args.batch_size}: expected >= 2 per process (BatchNorm after a global "
                f"pooling, as in Fast-SCNN's pyramid pooling, cannot train on a single image; or use "
                f"--sync-bn with several processes)"
            )
        self.model_path = Path("models") / f"{args.experiment_id}.pth"
        self.state_dir = Path("checkpoints") / args.experiment_id
        self.state_path = self.state_dir / "state.pth"
        self.saved = self._read_saved_state()
        if self.saved is None and not args.restart and self.model_path.exists():
            raise UserError(
                f"{self.model_path} already exists and {self.state_path} does not: a fresh start would "
                f"overwrite that model; pass --restart to train the stage again (overwriting it), or "
                f"use another --experiment-id"
            )

        # Data: the layout is checked here, before anything is written.
        cache = {"profile": self.profile, "cache": not args.no_cache}
        # Training samples travel as uint8 with their photometric parameters; the photometric ops, float conversion
        # and normalisation run on the training device (training/data/photometric.py). CPU-only with loader workers:
        # the ops run in the workers, in parallel with the step (measured faster there; README "Input pipeline").
        transform, self.photometric = train_pipeline(self.profile, args.augment)
        self.photometric_in_worker = self.device.type == "cpu" and args.num_workers > 0
        self.train_set = CityscapesSegmentation(
            args.data_dir,
            "train",
            transform,
            **cache,
            photometric=self.photometric,
            photometric_in_worker=self.photometric_in_worker,
        )
        # scored at the labels' own resolution (the benchmark's protocol) unless --val-resolution profile
        self.val_resolution = getattr(args, "val_resolution", "full")
        self.val_set = CityscapesSegmentation(
            args.data_dir, "val", val_transform(self.profile), full_labels=self.val_resolution == "full", **cache
        )
        num_train_batches_check(len(self.train_set), args.batch_size, self.dist.world_size)
        self.steps = steps_per_epoch(len(self.train_set), args.batch_size, self.dist.world_size)
        if self.saved is not None:
            self._check_resume_shape(self.saved)

        torch.manual_seed(args.seed)  # the same initial weights on every process
        self.model = build_model(getattr(args, "arch", "fast_scnn"), NUM_CLASSES, aux=args.aux_weight > 0)
        self.aux_line = init_aux_heads(self.model, args.init_from) if args.aux_weight > 0 and self.saved is None else ""
        if self.saved is None and args.init_from.lower() != "none":
            what = (
                "--previous-student-model-path"
                if hasattr(args, "trained_teacher_model_path")
                else "--previous-model-path"
            )
            load_weights(self.model, args.init_from, getattr(args, "arch", "fast_scnn"), what)
        self.loss_fn = make_loss(self.device)  # a teacher is loaded (and checked) here
        if self.main:  # all input is checked: now make sure the outputs can be written, before any training
            for folder in (self.model_path.parent, self.state_dir, Path("measurements")):
                check_writable(folder)
            remove_stale_temporaries(self.model_path)
            remove_stale_temporaries(self.state_path)

        self.model.to(self.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.amp_dtype = amp_dtype(self.device) if args.amp else None
        if args.amp and self.amp_dtype is None and self.main:
            print("--amp: mixed precision is used on CUDA only; this stage trains in fp32 on the CPU", flush=True)
        teacher = getattr(self.loss_fn, "teacher", None)  # distillation: make_loss exposes its frozen teacher
        if isinstance(teacher, nn.Module):
            prepare_teacher(teacher, self.device, self.memory_format, self.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.trained = self.model
        if self.dist.enabled:
            if args.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.trained = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if getattr(args, "compile", False):
            self.trained = compile_model(self.trained)
        # fused: one kernel for all parameters; a non-finite step is skipped on the device (step_monitor.py)
        self.optimizer = build_optimizer(self.model.parameters(), args)
        self.scheduler = build_scheduler(self.optimizer, args, args.epochs * self.steps)

        self.epoch, self.step, self.best_miou, self.best_epoch, self.elapsed = 0, 0, -math.inf, -1, 0.0
        self.epoch_sums: dict[str, float] = {}
        self.init_from = args.init_from
        self.wandb_id = None
        self.best_matrix = None  # confusion matrix (rows ground truth) of the best epoch's validation
        self.best_aux_heads = (
            None  # the best epoch's auxiliary heads, for the next stage (training/models/auxiliary.py)
        )
        self.provisional_state = False  # only the state written before the first step: removed if the stage fails
        self.last_metrics: dict = {}  # the last validation's figures
        self.nan_at_step = int(os.environ.get("FASTSCNN_TEST_NAN_AT_STEP", "0") or 0)
        if self.saved is not None:
            self._restore(self.saved)

        self.train_sampler = EpochSampler(len(self.train_set), args.seed, True, self.dist.rank, self.dist.world_size)
        self.val_sampler = EpochSampler(len(self.val_set), args.seed, False, self.dist.rank, self.dist.world_size)
        self.train_loader = make_loader(
            self.train_set, self.train_sampler, args.batch_size, args.num_workers, self.device, drop_last=True
        )
        self.val_loader = make_loader(
            self.val_set,
            self.val_sampler,
            args.batch_size,
            args.num_workers,
            self.device,
            drop_last=False,
            collate_fn=evaluation.collate,
        )

    # ----------------------------------------------------------------------------------------------- state
    def _read_saved_state(self) -> dict | None:
        if self.args.restart or not self.state_path.exists():
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(
                f"{self.state_path}: unreadable resumable state ({type(error).__name__}); "
                f"use --restart to start the stage afresh"
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UserError(f"{self.state_path}: not a state file of this version; use --restart to start afresh")
        current = _result_args(self.args)
        saved_args = dict(state["args"])
        saved_args.setdefault("val_resolution", "profile")  # states written before full-resolution scoring
        if self.args.lr_schedule != "constant" and state["epochs"] != self.args.epochs:
            saved_args["epochs"], current["epochs"] = state["epochs"], self.args.epochs
        differences = _differences(saved_args, current)
        if differences:
            raise UserError(
                f"{self.state_path}: cannot resume with different arguments ({'; '.join(differences)}); "
                f"use the original arguments, or --restart to start afresh"
            )
        return state

    def _check_resume_shape(self, state: dict) -> None:
        """Refuse a resume whose steps differ from the saved ones: the schedule and the data position would not fit."""
        saved = (state.get("world_size"), state.get("steps_per_epoch"))
        if saved == (None, None):  # a state written before they were recorded
            return
        if saved != (self.dist.world_size, self.steps):
            raise UserError(
                f"{self.state_path}: saved by {saved[0]} process(es) with {saved[1]} steps per epoch, but "
                f"this run has {self.dist.world_size} process(es) with {self.steps} steps per epoch; "
                f"resume with the same number of processes (and training images), or --restart to "
                f"start afresh"
            )

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_miou, self.best_epoch = state["best_miou"], state["best_epoch"]
        self.elapsed, self.epoch_sums = state["elapsed"], dict(state["epoch_sums"])
        self.init_from, self.wandb_id = state["init_from"], state.get("wandb_id")
        self.best_matrix = state.get("best_confusion_matrix")
        self.best_aux_heads = state.get("best_aux_heads")

    def save_state(self, elapsed: float) -> None:
        if not self.main:
            return
        self.provisional_state = False
        save_torch(
            {
                "version": STATE_VERSION,
                "script": self.script,
                "args": _result_args(self.args),
                "epochs": self.args.epochs,
                "epoch": self.epoch,
                "step": self.step,
                "world_size": self.dist.world_size,
                "steps_per_epoch": self.steps,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "best_miou": self.best_miou,
                "best_epoch": self.best_epoch,
                "elapsed": elapsed,
                "epoch_sums": self.epoch_sums,
                "init_from": self.init_from,
                "wandb_id": self.wandb_id or "",
                **({"best_confusion_matrix": self.best_matrix} if self.best_matrix is not None else {}),
                **({"best_aux_heads": self.best_aux_heads} if self.best_aux_heads else {}),
            },
            self.state_path,
        )

    def close_loaders(self) -> None:
        """Stop the loader worker processes now: they ignore SIGTERM (see data/dataset.py), so an exit that leaves
        them to the interpreter's clean-up (after an error in a worker, say) would wait for them for ever."""
        for loader in (self.train_loader, self.val_loader):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None

    # ----------------------------------------------------------------------------------------------- steps
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, target: torch.Tensor):
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, target.to(self.device, non_blocking=True)

    def train_batch_to_device(self, images: torch.Tensor, target: torch.Tensor, params: torch.Tensor):
        """A training batch as the loader ships it (uint8 images and train ids, photometric parameters on the CPU)
        -> the model's input on the device: augmented, normalised float images and int64 targets."""
        images = self.photometric.apply(
            images.to(self.device, non_blocking=True),
            params,
            self.memory_format,
            augment=not self.photometric_in_worker,
        )
        return images, target.to(self.device, non_blocking=True).long()

    def train_step(
        self, images: torch.Tensor, target: torch.Tensor, params: torch.Tensor, monitor: StepMonitor
    ) -> None:
        """One optimizer step on a loader batch; queues work only (no host read of a device value)."""
        images, target = self.train_batch_to_device(images, target, params)
        torch.manual_seed(_step_seed(self.args.seed, self.epoch, self.step, self.dist.rank))
        with self.autocast():
            logits = self.trained(images)
            aux_logits = ()
            if isinstance(logits, tuple):  # Fast-SCNN with auxiliary heads, in training mode
                logits, *aux_logits = logits
            loss, parts = self.loss_fn(logits, images, target)
            if aux_logits:
                aux = auxiliary_loss(aux_logits, target, self.args.aux_weight)
                loss, parts = loss + aux, {**parts, "train_aux_loss": aux}
        if self.nan_at_step == self.epoch * self.steps + self.step + 1:
            loss = loss * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.args.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        # the update is masked on the device where the loss or a gradient is non-finite (also without
        # --skip-nonfinite: the stage then stops at the next check, and nothing after the bad step is saved)
        good = skip_nonfinite_update(self.optimizer, self.scaler, torch.isfinite(loss.detach()))
        self.scheduler.step()
        self.step += 1
        monitor.record(self.step, loss, parts, good)

    def train_epoch(self, stop: StopRequest, tracker: Tracker, start_time: float) -> bool:
        """Train from (self.epoch, self.step) to the end of the epoch; False when stopped by a signal.

        The host reads the device every CHECK_EVERY steps, at the end of the epoch and before saving on a stop
        (`StepMonitor.check`): the first non-finite step of the epoch, the stop flag of every process, the loss
        for the progress bar and W&B."""
        args = self.args
        self.trained.train()
        self.train_sampler.set_epoch(self.epoch, start=self.step * args.batch_size)
        interactive = self.main and sys.stderr.isatty()
        bar = None
        if interactive:
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps,
                initial=self.step,
                desc=f"epoch {self.epoch + 1}/{args.epochs}",
                leave=False,
                dynamic_ncols=True,
            )
        monitor = StepMonitor(self.device, self.epoch_sums)
        tick, images_seen = time.perf_counter(), 0
        stopped = False
        for images, target, params in self.train_loader:
            self.train_step(images, target, params, monitor)
            images_seen += images.shape[0] * self.dist.world_size
            if bar is not None:
                bar.update(1)
            # the stop flag is read every step, under DDP from every process by a host all-reduce: a cancel's SIGTERM
            # leaves KillWait seconds (Slurm's default 30) for the save, less than CHECK_EVERY steps may take
            local_stop = distributed.any_process_on_host(stop.signum != 0)
            if not (self.step % CHECK_EVERY == 0 or self.step == self.steps or local_stop):
                continue
            first_bad, bad_loss, any_stop, loss = monitor.check(stop.signum != 0, self.dist.enabled)
            if first_bad is not None and not args.skip_nonfinite:
                if bar is not None:
                    bar.close()
                raise NonFiniteLossError(
                    f"loss is {bad_loss} at epoch {self.epoch + 1}, step {first_bad}; stopped, the last good "
                    f"state is kept in {self.state_path} (use --skip-nonfinite to skip such steps, or lower --lr)"
                )
            if bar is not None:
                rate = images_seen / max(time.perf_counter() - tick, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if self.main:
                tracker.log({"train_loss_step": loss, "learning_rate": self.optimizer.param_groups[0]["lr"]})
            if any_stop or local_stop:
                stopped = True
                break
        self.epoch_sums = monitor.epoch_sums()
        if bar is not None:
            bar.close()
        if stopped:
            self.save_state(self.elapsed + time.perf_counter() - start_time)
            distributed.barrier()  # no process exits (which ends an srun step) before the state is saved
            stop.saved = True
            return False
        self.throughput = images_seen / max(time.perf_counter() - tick, 1e-9)
        return True

    @torch.no_grad()
    def validate(self) -> tuple[dict, tuple | None]:
        """Loss and metrics on the whole validation split (each image counted once over all processes), scored by
        `training.evaluation.scoring` at the labels' own size (or the profile's with --val-resolution profile)."""
        self.trained.eval()
        # Without --sync-bn each process has updated its own BatchNorm statistics: validate with the main
        # process's, those of the model that is saved.
        distributed.broadcast_buffers(self.model)
        scorer = evaluation.Scorer(NUM_CLASSES, self.device, loss=True)
        preview = None
        for images, targets in self.val_loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            # fp32 even under --amp: the figure is that of the saved fp32 model, as evaluate_efficiency.py scores it
            logits = self.model(images).float()
            scorer.update([logits], targets)
            if preview is None and self.args.previews > 0:
                n = self.args.previews
                labels = torch.stack([evaluation.nearest(target, images.shape[-2:]) for target in targets[:n]])
                preview = (denormalize(images[:n]).cpu(), labels, logits[:n].argmax(1).cpu())
        scorer.all_reduce()
        return scorer.compute(), preview


def run_stage(args, profiles: dict, make_loss: Callable[[torch.device], LossFn], script: str) -> dict:
    """Train one curriculum stage as configured by `args`; returns the final summary."""
    stop = StopRequest()  # from the start: a warning signal during set-up stops the stage at its first step
    stage = None
    try:
        stage = Stage(args, profiles, make_loss, script)
        return _train(stage, stop)
    except UserError:
        # bad input found while training (a corrupt image, a NaN at the first steps): leave nothing behind
        if stage is not None and stage.main and stage.provisional_state:
            stage.state_path.unlink(missing_ok=True)
        raise
    finally:
        stop.restore()
        if stage is not None:
            stage.close_loaders()


def _train(stage: Stage, stop: StopRequest) -> dict:
    """The epochs of a set-up stage, its durations row and its summary."""
    args, script = stage.args, stage.script
    main, log = stage.main, (print if stage.main else (lambda *a, **k: None))
    if stage.saved is not None and stage.epoch >= args.epochs:
        log(
            f"{args.experiment_id}: already complete ({stage.epoch} epochs, best mIoU {stage.best_miou:.4f} at epoch "
            f"{stage.best_epoch}); use --restart to train it again",
            flush=True,
        )
        distributed.shutdown()
        return {"best_miou": stage.best_miou, "best_epoch": stage.best_epoch, "epochs_run": 0}

    log(
        f"{script}: {args.experiment_id} | {stage.profile.describe()} | {len(stage.train_set)} train / "
        f"{len(stage.val_set)} val images from {args.data_dir} | device {stage.device} x {stage.dist.world_size} | "
        f"batch {args.batch_size} per process, {stage.steps} steps/epoch",
        flush=True,
    )
    if stage.saved is not None:
        log(
            f"resume: {stage.state_path} at epoch {stage.epoch + 1}, step {stage.step} "
            f"(best mIoU so far {stage.best_miou:.4f})",
            flush=True,
        )
    log(
        f"init: {'weights from ' + stage.init_from if stage.init_from.lower() != 'none' else 'random'}"
        + (f"; {stage.aux_line}" if stage.aux_line else ""),
        flush=True,
    )
    log(stage.recipe_line, flush=True)

    if main:  # rows of epochs the state does not hold (a kill before its save, or --restart) are redone
        history.truncate(history.history_path(stage.state_dir), stage.epoch)
    scoring = evaluation.describe_scoring(stage.val_resolution, stage.profile)
    tracker = Tracker(args.experiment_id, vars(args) | {"script": script}, enabled=main, resume_id=stage.wandb_id)
    stage.wandb_id = tracker.run_id or stage.wandb_id
    start_time = time.perf_counter()
    if stage.saved is None:  # from now on models/<id>.pth is this run's (a requeue after a crash resumes it)
        stage.save_state(0.0)
        stage.provisional_state = True
    epochs_run = 0
    try:
        while stage.epoch < args.epochs:
            epoch_start = time.perf_counter()
            if not stage.train_epoch(stop, tracker, start_time):
                log(
                    f"stopped by {signal.Signals(stop.signum).name} at epoch {stage.epoch + 1}, step {stage.step}; "
                    f"state saved to {stage.state_path}: run the same command to resume (exit {EXIT_PREEMPTED})",
                    flush=True,
                )
                tracker.finish()
                distributed.shutdown()
                sys.exit(EXIT_PREEMPTED)
            metrics, preview = stage.validate()
            sums, steps = stage.epoch_sums, max(stage.epoch_sums.get("steps", 0), 1)
            train_means = {
                f"train_{k}" if not k.startswith("train_") else k: v / steps
                for k, v in sums.items()
                if k not in ("steps", "skipped_steps")
            }
            improved = metrics["miou"] > stage.best_miou
            stage.last_metrics = metrics
            stage.epoch += 1
            stage.step, stage.epoch_sums = 0, {}
            epochs_run += 1
            if improved:
                stage.best_miou, stage.best_epoch = metrics["miou"], stage.epoch
                stage.best_matrix = metrics["confusion_matrix"]
                stage.best_aux_heads = aux_heads_state(stage.model.state_dict()) or None
            if main:
                seconds = time.perf_counter() - epoch_start
                values = {
                    "epoch": stage.epoch,
                    "learning_rate": stage.optimizer.param_groups[0]["lr"],
                    **train_means,
                    "valid_loss": metrics["valid_loss"],
                    "valid_miou": metrics["miou"],
                    "valid_mean_dice": metrics["mean_dice"],
                    "valid_pixel_accuracy": metrics["pixel_accuracy"],
                    **{f"valid_iou/{n}": v for n, v in zip(CLASS_NAMES, metrics["iou"]) if not math.isnan(v)},
                }
                if improved:  # the best model before the state: a crash between them just redoes this epoch
                    save_torch(without_aux_heads(stage.model.state_dict()), stage.model_path)
                    if preview is not None:
                        save_bytes(
                            png_bytes(preview_grid(*preview)), stage.state_dir / f"preview-epoch-{stage.epoch:03d}.png"
                        )
                stage.save_state(stage.elapsed + time.perf_counter() - start_time)
                # the history row once the state holds the epoch (a failed state write leaves the history as it was)
                history.record_epoch(
                    history.history_path(stage.state_dir),
                    {
                        "profile": stage.profile.name,
                        "val_resolution": stage.val_resolution,
                        **values,
                        "seconds": seconds,
                        "images_per_s": stage.throughput,
                    },
                )
                skipped = sums.get("skipped_steps", 0)
                log(
                    f"epoch {stage.epoch}/{args.epochs} | "
                    + " | ".join(f"{k} {v:.4f}" for k, v in train_means.items())
                    + f" | valid_loss {metrics['valid_loss']:.4f} | mIoU {metrics['miou']:.4f} | mean Dice "
                    f"{metrics['mean_dice']:.4f} | pixel acc {metrics['pixel_accuracy']:.4f} | val at {scoring} | "
                    f"{seconds:.1f} s | "
                    f"{stage.throughput:.1f} img/s"
                    + (f" | skipped {int(skipped)} non-finite steps" if skipped else "")
                    + (" | new best" if improved else ""),
                    flush=True,
                )
                if improved:
                    log(format_iou_table(metrics["iou"], CLASS_NAMES), flush=True)
                if improved and preview is not None:
                    images, targets, predictions = preview
                    values["predictions"] = tracker.image(
                        preview_grid(images, targets, predictions), "image | label | prediction"
                    )
                tracker.log({k: v for k, v in values.items() if v is not None})
    except NonFiniteLossError:
        tracker.finish()
        distributed.shutdown()
        raise

    total = stage.elapsed + time.perf_counter() - start_time
    summary = {"best_miou": stage.best_miou, "best_epoch": stage.best_epoch, "epochs_run": epochs_run}
    best, last = _figures(stage.best_matrix), stage.last_metrics or _figures(None)
    if main:
        append_csv_row(
            Path("measurements") / "durations.csv",
            {
                "experiment_id": args.experiment_id,
                "script": script,
                "profile": stage.profile.name,
                "image_size": "x".join(map(str, stage.profile.image_size)),
                "patch_size": "x".join(map(str, stage.profile.patch_size)),
                "epochs": args.epochs,
                "wall_time_s": f"{total:.1f}",
                "s_per_epoch": f"{total / args.epochs:.2f}",
                "device": distributed.device_name(stage.device) if stage.device.type == "cuda" else "cpu",
                "processes": stage.dist.world_size,
                "best_miou": f"{stage.best_miou:.6f}",
                "best_epoch": stage.best_epoch,
                "val_resolution": stage.val_resolution,
                "last_miou": f"{last['miou']:.6f}",
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        )
        log(
            f"done: {args.experiment_id} best mIoU {stage.best_miou:.4f} at epoch {stage.best_epoch} (mean Dice "
            f"{best['mean_dice']:.4f}, pixel acc {best['pixel_accuracy']:.4f}); last epoch {stage.epoch}: mIoU "
            f"{last['miou']:.4f} (mean Dice {last['mean_dice']:.4f}, pixel acc {last['pixel_accuracy']:.4f}); val at "
            f"{scoring} -> {stage.model_path}; {total:.0f} s in all",
            flush=True,
        )
        tracker.summary(
            {
                "best_miou": stage.best_miou,
                "best_epoch": stage.best_epoch,
                "best_mean_dice": best["mean_dice"],
                "last_miou": last["miou"],
                "last_mean_dice": last["mean_dice"],
                "val_resolution": stage.val_resolution,
            }
        )
    tracker.finish()
    distributed.shutdown()
    return summary


def _figures(matrix: torch.Tensor | None) -> dict:
    """mIoU, mean Dice, pixel accuracy of a saved confusion matrix (nan without one)."""
    scores = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    if matrix is not None:
        scores.matrix = matrix.to(torch.int64)
    return scores.compute()


def stage_main(argv, doc: str, profiles: dict, default_profile: str, make_loss, *add_args, script: str) -> dict:
    """What every train*.py's main does: the shared flags plus the script's own (`add_args`), then one stage."""
    parser = get_args_parser(doc.strip().splitlines()[0], default_profile)
    for add in add_args:
        add(parser)
    args = parser.parse_args(argv)
    return run_stage(args, profiles, lambda device: make_loss(args, device), script=script)
