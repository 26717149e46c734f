"""Building a stage from its arguments: the runtime (device, processes), where its files go, the state it resumes
from, the data, the model with its starting weights, the loss (a distillation loss owns its teacher), the optimizer.

Every input is checked before anything is written: the arguments, the saved state (against the arguments, the
models it started from, the data files, the processes), the data set's layout, the starting weights and the teacher;
then whether the output folders can be written. A fresh start refuses to overwrite an existing models/<id>.pth that
no state vouches for (--restart does).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from training.data.classes import describe
from training.data.dataset import (
    CityscapesSegmentation,
    EpochSampler,
    check_cache_room,
    make_loader,
    num_train_batches_check,
    steps_per_epoch,
    val_transform,
)
from training.data.layouts import dataset_profile, native_size
from training.data.transforms import train_pipeline
from training.engine.cli import check_args
from training.engine.optim import build_optimizer, build_scheduler
from training.engine.recipes import lr_scale, parse_scale_range, resolve_recipe
from training.engine.records import StagePaths
from training.engine.schedule import check_continuity, schedule_line, schedule_record
from training.engine.state import (
    Progress,
    check_classes,
    check_data,
    check_resume_shape,
    data_fingerprint,
    init_flag,
    input_models,
    read_state,
    restore,
)
from training.errors import UserError
from training.evaluation.scoring import collate
from training.evaluation.trained import card_classes
from training.files import check_writable, remove_stale_temporaries
from training.losses import DistillationLoss
from training.models.auxiliary import init_aux_heads
from training.models.build import build_model, load_weights
from training.models.card import card_path, read_card
from training.profiles import resolve_profile
from training.runtime import distributed
from training.runtime.acceleration import amp_dtype, compile_model, prepare_teacher


class Stage:
    """Everything one stage trains with: built by `build_stage`, run by `training.engine.loop.train`.

    args, script, profile (scaled to the data set's size for other data sets than Cityscapes), device, dist
    (processes), paths (StagePaths), saved (the state resumed from, or None), inputs (the models it started from,
    with their hashes), classes (the data set's ClassSet), data (the splits' fingerprints), train_set / val_set,
    steps (per epoch), model (plain) and trained (DDP / compiled wrapper), loss_fn, optimizer, scheduler, scaler,
    progress (state.Progress), the loaders and samplers; lr (--lr after --lr-scaling), schedule (its record,
    training/engine/schedule.py), previous_schedule (that of the model it starts from), schedule_line."""

    def __init__(self, args, script: str):
        self.args, self.script = args, script
        self.saved: dict | None = None
        self.provisional_state = False  # only the state written before the first step: removed if the stage fails
        self.aux_line = ""
        self.nan_at_step = int(os.environ.get("FASTSCNN_TEST_NAN_AT_STEP", "0") or 0)
        self.train_loader = self.val_loader = None

    @property
    def main(self) -> bool:
        return self.dist.is_main

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def close_loaders(self) -> None:
        """Stop the loader worker processes now: they ignore SIGTERM (see data/dataset.py), so an exit that leaves
        them to the interpreter's clean-up (after an error in a worker, say) would wait for them for ever."""
        for loader in (self.train_loader, self.val_loader):
            if loader is None:
                continue
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None


def build_stage(args, profiles: dict, make_loss, script: str) -> Stage:
    """A stage ready to train (or to say it is complete), from the parsed arguments of `script`, its profile table
    and its `make_loss(args, device) -> nn.Module`."""
    stage = Stage(args, script)
    stage.recipe_line = resolve_recipe(args, distributed.detect().world_size)
    check_args(args)
    _runtime(stage, profiles)
    stage.paths = StagePaths(Path(getattr(args, "output_dir", ".")).expanduser(), args.experiment_id)
    stage.saved = read_state(stage.paths.state, args)
    if stage.saved is None and not args.restart and stage.paths.model.exists():
        raise UserError(
            f"{stage.paths.model} already exists and {stage.paths.state} does not: a fresh start would "
            f"overwrite that model; pass --restart to train the stage again (overwriting it), or "
            f"use another --experiment-id"
        )
    saved_inputs = stage.saved.get("inputs") if stage.saved is not None else None
    stage.inputs = saved_inputs if saved_inputs is not None else input_models(args)
    _data(stage)
    _model(stage, make_loss)
    _learning_rate(stage, profiles)
    if stage.main:  # all input is checked: now make sure the outputs can be written, before any training
        for folder in (stage.paths.model.parent, stage.paths.state_dir, stage.paths.measurements):
            check_writable(folder)
        for path in (stage.paths.model, card_path(stage.paths.model), stage.paths.state):
            remove_stale_temporaries(path)
    _place(stage)
    # fused: one kernel for all parameters; a non-finite step is skipped on the device (step_monitor.py)
    stage.optimizer = build_optimizer(stage.model.parameters(), args, stage.lr)
    stage.scheduler = build_scheduler(stage.optimizer, args, args.epochs * stage.steps, stage.lr)
    stage.schedule = schedule_record(args, stage.lr, args.epochs * stage.steps, stage.previous_schedule)
    stage.progress = Progress()
    if stage.saved is not None:
        restore(stage, stage.saved)
    _loaders(stage)
    return stage


def _runtime(stage: Stage, profiles: dict) -> None:
    """The profile, the device and the processes; paths given by the user made absolute where they are data."""
    args = stage.args
    stage.profile = resolve_profile(args.profile, profiles)
    args.profile = stage.profile.name
    args.dataset = getattr(args, "dataset", "cityscapes")
    args.data_dir = str(Path(args.data_dir or f"./data/{args.dataset}").expanduser().resolve())
    if str(args.init_from).lower() != "none":
        args.init_from = str(Path(args.init_from).expanduser())
    stage.device = distributed.pick_device(args.device)
    stage.dist = distributed.init(stage.device.type)
    if stage.device.type == "cuda":
        stage.device = distributed.cuda_device(stage.dist.local_rank)
        torch.backends.cudnn.benchmark = True
    if args.batch_size * (stage.dist.world_size if args.sync_bn else 1) < 2:
        raise UserError(
            f"--batch-size {args.batch_size}: expected >= 2 per process (BatchNorm after a global "
            f"pooling, as in Fast-SCNN's pyramid pooling, cannot train on a single image; or use "
            f"--sync-bn with several processes)"
        )


def _data(stage: Stage) -> None:
    """The train and val splits of --dataset (layout checked here, before anything is written) at the data set's
    profile, its classes, and the resume's data checks."""
    args = stage.args
    stage.native_size = native_size(args.dataset, args.data_dir)
    stage.profile = dataset_profile(stage.profile, args.dataset, stage.native_size)
    cache = {
        "profile": stage.profile,
        "cache": not args.no_cache,
        "cache_dir": getattr(args, "cache_dir", None),
        "dataset": args.dataset,
    }
    check_cache_room(args.data_dir, {"train": False, "val": getattr(args, "val_resolution", "full") == "full"}, **cache)
    # Training samples travel as uint8 with their photometric parameters; the photometric ops, float conversion and
    # normalisation run on the training device (training/data/photometric.py). CPU-only with loader workers: the ops
    # run in the workers, in parallel with the step (measured faster there).
    transform, stage.photometric = train_pipeline(
        stage.profile,
        args.augment,
        parse_scale_range(args.scale_range),
        args.photometric_strength,
        args.whole_images,
    )
    stage.photometric_in_worker = stage.device.type == "cpu" and args.num_workers > 0
    stage.train_set = CityscapesSegmentation(
        args.data_dir,
        "train",
        transform,
        **cache,
        photometric=stage.photometric,
        photometric_in_worker=stage.photometric_in_worker,
    )
    # scored at the labels' own resolution (the benchmark's protocol) unless --val-resolution profile
    stage.val_resolution = getattr(args, "val_resolution", "full")
    stage.val_set = CityscapesSegmentation(
        args.data_dir, "val", val_transform(stage.profile), full_labels=stage.val_resolution == "full", **cache
    )
    num_train_batches_check(len(stage.train_set), args.batch_size, stage.dist.world_size)
    stage.steps = steps_per_epoch(len(stage.train_set), args.batch_size, stage.dist.world_size)
    stage.classes = stage.train_set.classes
    stage.data = {
        split: data_fingerprint(args.data_dir, [*dataset.images, *dataset.labels])
        for split, dataset in (("train", stage.train_set), ("val", stage.val_set))
    }
    if stage.saved is not None:
        check_classes(stage.saved, stage.classes, stage.paths.state)
        check_data(stage.saved, stage.data, stage.paths.state)
        check_resume_shape(stage.saved, stage.paths.state, stage.dist.world_size, stage.steps)


def _model(stage: Stage, make_loss) -> None:
    """The model with its starting weights (and auxiliary heads), and the loss (a teacher is loaded and checked)."""
    args = stage.args
    torch.manual_seed(args.seed)  # the same initial weights on every process
    arch = getattr(args, "arch", "fast_scnn")
    stage.model = build_model(arch, stage.classes.num_classes, aux=args.aux_weight > 0, dropout=args.dropout)
    if args.aux_weight > 0 and stage.saved is None:
        stage.aux_line = init_aux_heads(stage.model, args.init_from)
    if stage.saved is None and args.init_from.lower() != "none":
        _check_classes(stage, init_flag(args), args.init_from)
        load_weights(stage.model, args.init_from, arch, init_flag(args))
    teacher = getattr(args, "trained_teacher_model_path", None)
    if teacher is not None:
        _check_classes(stage, "--trained-teacher-model-path", teacher)
    stage.loss_fn = make_loss(args, stage.device)
    if not isinstance(stage.loss_fn, nn.Module):
        raise TypeError(f"{stage.script}: make_loss must return an nn.Module, got {type(stage.loss_fn).__name__}")
    if isinstance(stage.loss_fn, DistillationLoss):  # a teacher without a card: built for its weights' classes
        count = getattr(stage.loss_fn.teacher, "num_classes", None)
        if count is not None and count != stage.classes.num_classes:
            raise UserError(
                f"--trained-teacher-model-path {teacher}: it was trained for {count} classes, expected "
                f"{stage.classes.num_classes} (this stage trains on {describe(stage.classes)}, --dataset "
                f"{args.dataset}); expected a teacher trained on the same classes"
            )


def _learning_rate(stage: Stage, profiles: dict) -> None:
    """The stage's peak lr (--lr scaled by --lr-scaling) and its place in the run's schedule, checked against the
    model it starts from (a fresh start only: a resume checks that model's hash instead)."""
    args = stage.args
    sample = stage.profile.image_size if args.whole_images else stage.profile.patch_size
    reference = dataset_profile(resolve_profile(1, profiles), args.dataset, stage.native_size).patch_size
    scale, how = lr_scale(args, stage.dist.world_size, sample, reference)
    stage.lr = args.lr * scale
    if how:
        stage.recipe_line += (
            f"; lr scaling {args.lr_scaling}: lr {stage.lr:g} = {args.lr:g} {how} (min lr {args.min_lr * scale:g})"
        )
    stage.previous_schedule = None
    if str(args.init_from).lower() != "none" and Path(args.init_from).expanduser().is_file():
        stage.previous_schedule = (read_card(Path(args.init_from).expanduser()) or {}).get("schedule")
    if stage.saved is None:
        check_continuity(args, stage.previous_schedule)
    stage.schedule_line = schedule_line(args, stage.lr, args.epochs * stage.steps)


def _check_classes(stage: Stage, flag: str, path: str) -> None:
    """A model the stage starts from or distils from must predict the data set's classes: those its model card
    records (the same names in the same order). Without a card its weights are checked when they are loaded (the
    number of classes of the head); a missing file is left to its loader."""
    path = Path(path).expanduser()
    if str(path).lower() in ("", "none") or not path.is_file():
        return
    card = read_card(path)
    if card is None:
        return
    theirs = card_classes(card, card_path(path))
    if not theirs.same_classes(stage.classes):
        raise UserError(
            f"{flag} {path}: a model of {describe(theirs)}; this stage trains on {describe(stage.classes)} "
            f"(--dataset {stage.args.dataset}); expected a model trained on the same classes"
        )


def _place(stage: Stage) -> None:
    """Model and loss on the device, in their memory format and precision; the DDP and compiled wrappers."""
    args = stage.args
    stage.model.to(stage.device)
    stage.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    stage.model.to(memory_format=stage.memory_format)
    stage.amp_dtype = amp_dtype(stage.device) if args.amp else None
    if args.amp and stage.amp_dtype is None and stage.main:
        print("--amp: mixed precision is used on CUDA only; this stage trains in fp32 on the CPU", flush=True)
    stage.loss_fn.to(stage.device)
    if isinstance(stage.loss_fn, DistillationLoss):  # its frozen teacher in the student's form
        prepare_teacher(stage.loss_fn.teacher, stage.device, stage.memory_format, stage.amp_dtype)
    stage.scaler = torch.amp.GradScaler("cuda", enabled=stage.amp_dtype == torch.float16)
    stage.trained = stage.model
    if stage.dist.enabled:
        if args.sync_bn:
            stage.model = nn.SyncBatchNorm.convert_sync_batchnorm(stage.model)
        stage.trained = nn.parallel.DistributedDataParallel(
            stage.model, device_ids=[stage.device.index] if stage.device.type == "cuda" else None
        )
    if getattr(args, "compile", False):
        stage.trained = compile_model(stage.trained)


def _loaders(stage: Stage) -> None:
    args, dist = stage.args, stage.dist
    stage.train_sampler = EpochSampler(len(stage.train_set), args.seed, True, dist.rank, dist.world_size)
    stage.val_sampler = EpochSampler(len(stage.val_set), args.seed, False, dist.rank, dist.world_size)
    stage.train_loader = make_loader(
        stage.train_set, stage.train_sampler, args.batch_size, args.num_workers, stage.device, drop_last=True
    )
    stage.val_loader = make_loader(
        stage.val_set,
        stage.val_sampler,
        args.batch_size,
        args.num_workers,
        stage.device,
        drop_last=False,
        collate_fn=collate,
    )
