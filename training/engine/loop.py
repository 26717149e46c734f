"""The epoch loop of a built stage (training/engine/build.py): train, validate, record, epoch after epoch.

Randomness is a function of the seed, epoch and step (data/dataset.py and `step_seed`), so on the CPU a resumed stage
ends exactly where an uninterrupted one would (bit for bit: model, optimizer, scheduler, history). On CUDA it resumes
at the same step with the same data, but not bit-exactly: cuDNN's benchmark choice of kernels and atomic-add kernels
are not deterministic.

A stop signal (signals.py) saves the state after the current step and ends the stage with `Preempted` (exit 75: run
the same command to resume). A non-finite loss ends it with NonFiniteLossError (exit 3) unless --skip-nonfinite.

Test hook: FASTSCNN_TEST_NAN_AT_STEP=N makes the loss of the N-th training step of the stage (1-based, counted over
epochs: epoch e, step s is N = (e - 1) * steps_per_epoch + s) NaN, to test the handling of non-finite losses.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from training.data.dataset import to_model_input
from training.engine.recalibration import recalibrate_batchnorm
from training.engine.records import Records
from training.engine.step_monitor import CHECK_EVERY, StepMonitor, skip_nonfinite_update
from training.engine.tracking import Tracker
from training.errors import NonFiniteLossError, Preempted
from training.evaluation.scoring import Scorer, nearest
from training.models.auxiliary import auxiliary_loss
from training.runtime import distributed
from training.runtime.signals import StopRequest


def train(stage, stop: StopRequest) -> dict:
    """Run the stage from where its state is to its last epoch; returns its summary."""
    records = Records(stage)
    records.restore_missing_model()
    if stage.saved is not None and stage.progress.epoch >= stage.args.epochs and not test_resolution_pending(stage):
        return records.already_complete()
    records.start()
    try:
        if test_resolution_pending(stage):
            start_test_resolution(stage, stop, records)
        epochs_run = run_epochs(stage, stop, records)
    except (NonFiniteLossError, Preempted):
        records.close()
        raise
    return records.finish(epochs_run)


def run_epochs(stage, stop: StopRequest, records: Records) -> int:
    """The epochs from the saved position to --epochs; returns how many ran."""
    progress, epochs_run = stage.progress, 0
    while progress.epoch < stage.args.epochs:
        epoch_start = time.perf_counter()
        throughput = train_epoch(stage, stop, records.tracker)
        if throughput is None:
            _stop(stage, stop, records)
        metrics, preview = validate(stage)
        sums = progress.epoch_sums
        improved = progress.end_epoch(metrics, stage.model)
        epochs_run += 1
        records.epoch(metrics, sums, preview, improved, time.perf_counter() - epoch_start, throughput)
    return epochs_run


def _stop(stage, stop: StopRequest, records: Records) -> None:
    """A stop signal: save the state and end the stage with Preempted (exit 75)."""
    records.stopped(stop.name)
    distributed.barrier()  # no process exits (which ends an srun step) before the state is saved
    stop.saved = True
    raise Preempted()


# ----------------------------------------------------------------------------------------------- test resolution
def test_resolution_pending(stage) -> bool:
    """A test-resolution stage (--whole-images or --bn-recalibrate) whose start is not done yet."""
    args = stage.args
    return (args.whole_images or args.bn_recalibrate > 0) and stage.progress.test_resolution is None


def start_test_resolution(stage, stop: StopRequest, records: Records) -> None:
    """Before a test-resolution stage's first epoch: the validation mIoU of the model it starts from, its BatchNorm
    statistics re-estimated at the stage's input size (--bn-recalibrate N), the mIoU again; recorded as epoch 0
    (a model that no epoch beats stays the stage's model)."""
    tick = time.perf_counter()
    before, preview = validate(stage)
    metrics, batches = before, 0
    if stage.args.bn_recalibrate > 0:
        inputs, wanted = _recalibration_inputs(stage, stop), stage.args.bn_recalibrate
        batches = recalibrate_batchnorm(stage.model, inputs, stage.autocast, expected=wanted)
        if stop.signum != 0:
            _stop(stage, stop, records)
        metrics, preview = validate(stage)
    sample = stage.profile.image_size if stage.args.whole_images else stage.profile.patch_size
    stage.progress.test_resolution = {
        "miou_before": before["miou"],
        "miou_after": metrics["miou"] if batches else None,
        "bn_recalibrate": batches,
        "whole_images": bool(stage.args.whole_images),
        "input_size": "x".join(map(str, sample)),
    }
    improved = stage.progress.keep_if_best(metrics, stage.model)
    records.test_resolution(metrics, preview, improved, time.perf_counter() - tick)


def _recalibration_inputs(stage, stop: StopRequest):
    """The model inputs of --bn-recalibrate's batches: training batches (the stage's own augmentation and size) of
    sampler epochs -1, -2, ... (draws of their own), until N batches or a stop signal on any process."""
    wanted, given, sweep = stage.args.bn_recalibrate, 0, 0
    while given < wanted:
        sweep += 1
        stage.train_sampler.set_epoch(-sweep)
        for images, target, params in stage.train_loader:
            if distributed.any_process_on_host(stop.signum != 0):
                return
            yield train_batch_to_device(stage, images, target, params)[0]
            given += 1
            if given == wanted:
                return


# ----------------------------------------------------------------------------------------------- training
def train_epoch(stage, stop: StopRequest, tracker: Tracker) -> float | None:
    """Train from the saved (epoch, step) to the end of the epoch; the epoch's images/s, or None when stopped by a
    signal (the loss sums so far are in `stage.progress.epoch_sums`).

    The host reads the device every CHECK_EVERY steps, at the end of the epoch and before saving on a stop
    (`StepMonitor.check`): the first non-finite step of the epoch, the stop flag of every process, the loss for the
    progress bar and W&B. The stop flag itself is read every step (under DDP from every process, on the host)."""
    progress = stage.progress
    stage.trained.train()
    stage.train_sampler.set_epoch(progress.epoch, start=progress.step * stage.args.batch_size)
    bar = _progress_bar(stage)
    monitor = StepMonitor(stage.device, progress.epoch_sums)
    tick, images_seen, stopped = time.perf_counter(), 0, False
    for images, target, params in stage.train_loader:
        train_step(stage, images, target, params, monitor)
        images_seen += images.shape[0] * stage.dist.world_size
        if bar is not None:
            bar.update(1)
        # the stop flag is read every step, under DDP from every process by a host all-reduce: a cancel's SIGTERM
        # leaves KillWait seconds (Slurm's default 30) for the save, less than CHECK_EVERY steps may take
        local_stop = distributed.any_process_on_host(stop.signum != 0)
        if not (progress.step % CHECK_EVERY == 0 or progress.step == stage.steps or local_stop):
            continue
        first_bad, bad_loss, any_stop, loss = monitor.check(stop.signum != 0, stage.dist.enabled)
        if first_bad is not None and not stage.args.skip_nonfinite:
            if bar is not None:
                bar.close()
            raise _nonfinite_error(stage, first_bad, bad_loss)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_seen / max(time.perf_counter() - tick, 1e-9):.1f}")
        if stage.main:
            tracker.log({"train_loss_step": loss, "learning_rate": stage.optimizer.param_groups[0]["lr"]})
        if any_stop or local_stop:
            stopped = True
            break
    progress.epoch_sums = monitor.epoch_sums()
    if bar is not None:
        bar.close()
    return None if stopped else images_seen / max(time.perf_counter() - tick, 1e-9)


def _progress_bar(stage):
    """A tqdm bar on an interactive terminal of the main process, else None."""
    if not (stage.main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    progress = stage.progress
    return tqdm(
        total=stage.steps,
        initial=progress.step,
        desc=f"epoch {progress.epoch + 1}/{stage.args.epochs}",
        leave=False,
        dynamic_ncols=True,
    )


def _nonfinite_error(stage, first_bad: int, bad_loss: float) -> NonFiniteLossError:
    """The stop on a non-finite loss, saying what is left: a stage that has not finished an epoch keeps no state
    (its provisional state is removed, training/engine/stage.py); else the last saved one."""
    if stage.provisional_state:
        kept = "no state was kept: the stage had not finished an epoch, so the same command starts it afresh"
    else:
        kept = f"the last good state is kept in {stage.paths.state}"
    return NonFiniteLossError(
        f"loss is {bad_loss} at epoch {stage.progress.epoch + 1}, step {first_bad}; stopped, {kept} "
        f"(use --skip-nonfinite to skip such steps, or lower --lr)"
    )


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    # Dropout randomness of a step depends only on where it is in the stage: exact resume without saving RNG streams.
    return (seed * 1_000_003 + epoch * 10_007 + step) * 64 + rank


def train_batch_to_device(stage, images: torch.Tensor, target: torch.Tensor, params: torch.Tensor):
    """A training batch as the loader ships it (uint8 images and train ids, photometric parameters on the CPU) ->
    the model's input on the device: augmented, normalised float images and int64 targets."""
    images = stage.photometric.apply(
        images.to(stage.device, non_blocking=True),
        params,
        stage.memory_format,
        augment=not stage.photometric_in_worker,
    )
    return images, target.to(stage.device, non_blocking=True).long()


def train_step(stage, images: torch.Tensor, target: torch.Tensor, params: torch.Tensor, monitor: StepMonitor) -> None:
    """One optimizer step on a loader batch; queues work only (no host read of a device value)."""
    progress, args = stage.progress, stage.args
    images, target = train_batch_to_device(stage, images, target, params)
    torch.manual_seed(step_seed(args.seed, progress.epoch, progress.step, stage.dist.rank))
    with stage.autocast():
        logits = stage.trained(images)
        aux_logits = ()
        if isinstance(logits, tuple):  # Fast-SCNN with auxiliary heads, in training mode
            logits, *aux_logits = logits
        loss, parts = stage.loss_fn(logits, images, target)
        if aux_logits:
            aux = auxiliary_loss(aux_logits, target, args.aux_weight)
            loss, parts = loss + aux, {**parts, "train_aux_loss": aux}
    if stage.nan_at_step == progress.epoch * stage.steps + progress.step + 1:
        loss = loss * float("nan")
    stage.optimizer.zero_grad(set_to_none=True)
    stage.scaler.scale(loss).backward()
    if args.grad_clip > 0:
        stage.scaler.unscale_(stage.optimizer)
        nn.utils.clip_grad_norm_(stage.model.parameters(), args.grad_clip)
    # the update is masked on the device where the loss or a gradient is non-finite (also without --skip-nonfinite:
    # the stage then stops at the next check, and nothing after the bad step is saved)
    good = skip_nonfinite_update(stage.optimizer, stage.scaler, torch.isfinite(loss.detach()))
    stage.scheduler.step()
    progress.step += 1
    monitor.record(progress.step, loss, parts, good)


@torch.no_grad()
def validate(stage) -> tuple[dict, tuple | None]:
    """Loss and metrics on the whole validation split (each image counted once over all processes), scored by
    `training.evaluation.scoring` at the labels' own size (or the profile's with --val-resolution profile); and the
    preview images (image, labels, prediction) of the first batch."""
    stage.trained.eval()
    # Without --sync-bn each process has updated its own BatchNorm statistics: validate with the main process's,
    # those of the model that is saved.
    distributed.broadcast_buffers(stage.model)
    scorer = Scorer(stage.classes.num_classes, stage.device, loss=True)
    preview, count = None, stage.args.previews
    for images, targets in stage.val_loader:  # uint8 images: normalised on the device
        # fp32 even under --amp: the figure is that of the saved fp32 model, as evaluate_efficiency.py scores it
        logits = stage.model(to_model_input(images, stage.device, stage.memory_format)).float()
        scorer.update([logits], targets)
        if preview is None and count > 0:
            labels = torch.stack([nearest(target, images.shape[-2:]) for target in targets[:count]])
            preview = (images[:count].clone(), labels, logits[:count].argmax(1).cpu())
    scorer.all_reduce()
    return scorer.compute(), preview
