"""What predict.py does (and evaluate_efficiency.py's old prediction flags, forwarded to it).

Two jobs, one model loaded from its card (training/evaluation/trained.py):
- `run_export`: the benchmark's export (`--export-predictions DIR [--split val|test] [--images FOLDER]`): every
  image of a Cityscapes split (or of a folder of photos) predicted at the profile's size, written as Cityscapes
  label-id PNGs at the image's own resolution (training/evaluation/export.py), and scored where the split has labels.
- `run_predict`: `--input PATH --output DIR`: class-index PNGs and colour overlays of an image or a folder of
  images, at each input's own resolution; inputs of one size are batched (`--batch-size`). A video file: a
  class-index PNG per frame (`DIR/<stem>/<frame>.png`) and an annotated video (`<stem>_overlay.mp4`).
Both print the frames per second they reached and the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.data.classes import describe
from training.data.photometric import to_model_input
from training.efficiency import backends
from training.errors import UserError
from training.evaluation.export import ClassIndexExport, PredictionExport, VideoOverlay, overlay_folder
from training.evaluation.inputs import Frame, KeepAspectResize, cityscapes_names, open_input, photo_images, split_images
from training.evaluation.scoring import collate, evaluate_accuracy, format_scores, scores_at
from training.evaluation.trained import TrainedModel, load_trained, predicts_cityscapes, read_trained
from training.evaluation.tta import forward_views, tta_transform
from training.files import check_writable
from training.runtime.distributed import device_name, pick_device


def _tta_modes(args) -> list[str]:
    return list(args.tta) if isinstance(args.tta, (list, tuple)) else [args.tta]


def check_export_args(args) -> None:
    """The export's flags together: one model, one TTA mode, an output folder for --images and --overlay."""
    if args.images and not args.export_predictions:
        raise UserError("--images: expected --export-predictions DIR as well (where the predictions go)")
    if args.overlay is not None and not args.export_predictions and not getattr(args, "input", None):
        raise UserError("--overlay: expected --export-predictions DIR as well")
    if not args.export_predictions:
        if args.split != "val":
            raise UserError(f"--split {args.split}: scores only val; expected --export-predictions DIR with it")
        return
    if getattr(args, "all", None):
        raise UserError("--export-predictions: expected one model (--current-model-path), not --all")
    if getattr(args, "dataset", None) not in (None, "cityscapes"):
        raise UserError(
            f"--dataset {args.dataset}: --export-predictions writes Cityscapes label ids (the benchmark's format); "
            f"expected --dataset cityscapes, or --input PATH --output DIR (class-index PNGs) for other data sets"
        )
    if not args.model:
        raise UserError("--export-predictions: expected --model-path M as well (the model that predicts)")
    modes = _tta_modes(args)
    if len(modes) > 1:
        raise UserError(
            f"--export-predictions writes one set of predictions; expected one --tta mode, got {' '.join(modes)}"
        )
    if getattr(args, "val_resolution", "full") != "full":
        raise UserError(
            "--export-predictions writes and scores at the images' own resolution; expected --val-resolution full"
        )
    if args.images and modes[0] == "multiscale":
        raise UserError(
            "--tta multiscale: not for --images (photos keep their own aspect ratio); expected none or flip"
        )
    if args.images and args.split != "val":
        raise UserError("--split: not with --images (a folder of photos has no splits)")


@dataclass
class Throughput:
    frames: int = 0
    seconds: float = 0.0  # the whole loop: reading, network, writing
    network_seconds: float = 0.0  # forward passes, upsampling and argmax (device synchronised)
    unit: str = "images"

    def describe(self, device: torch.device) -> str:
        fps = self.frames / max(self.seconds, 1e-9)
        line = f"{self.frames} {self.unit} in {self.seconds:.2f} s: {fps:.2f} frames/s end to end"
        if self.network_seconds:
            line += f" (network {self.frames / self.network_seconds:.2f} frames/s)"
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        return line + f" | device {device} ({device_name(device)}{threads})"


def _prepare(args) -> tuple[TrainedModel, torch.device]:
    trained = read_trained(args.model, args.arch, args.profile)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return trained, device


def backend_model(args, trained: TrainedModel, model: nn.Module, device: torch.device, log=print):
    """The model as --backend runs it: itself (torch), or ONNX Runtime on its ONNX export, cached next to it
    (efficiency/backends.py); a backend that cannot run on `device` is refused before anything is predicted."""
    chosen = getattr(args, "backend", None) or "torch"  # evaluate_efficiency.py's --backend is a list
    names = list(dict.fromkeys([chosen] if isinstance(chosen, str) else chosen))
    if len(names) > 1:
        raise UserError(f"--backend {' '.join(names)}: predictions are made by one backend; expected one")
    if names[0] == "torch":
        return model
    backends.check_backend(names, device)
    log(backends.describe_providers())
    return backends.OnnxBackend(model, trained.path, device, torch.get_num_threads(), log)


def _export_dataset(args, trained: TrainedModel, tta: str):
    """The images of the export, their output names, batch size, and a description."""
    from training.data.dataset import CityscapesSegmentation

    profile = trained.profile
    if args.images:
        dataset = photo_images(args.images, profile)
        return dataset, dataset.names, 1, f"{len(dataset)} images of {args.images}"  # sizes differ: batch 1
    if args.split == "test":
        dataset = split_images(args.data_dir, "test", tta_transform(profile, tta))
        return dataset, dataset.names, args.batch_size, f"{len(dataset)} test images (no labels: not scored)"
    dataset = CityscapesSegmentation(args.data_dir, args.split, tta_transform(profile, tta), full_labels=True)
    return dataset, cityscapes_names(dataset), args.batch_size, f"{len(dataset)} {args.split} images"


def run_export(args, log: Callable[[str], None] = print) -> dict | None:
    """`--export-predictions DIR`: predict every image of the split (or of --images), write the label-id PNGs (and
    overlays), score them where the split has labels, print the scores. Returns the metrics (None without labels)."""
    from training.data.dataset import EpochSampler, make_loader

    check_export_args(args)
    args.data_dir = args.data_dir or "./data/cityscapes"
    trained, device = _prepare(args)
    if not predicts_cityscapes(trained.classes):
        raise UserError(
            f"--export-predictions: writes Cityscapes label ids, but {args.model} predicts "
            f"{describe(trained.classes)}; expected --input PATH --output DIR (class-index PNGs) for this model"
        )
    model = backend_model(args, trained, load_trained(trained, device, "--current-model-path"), device, log)
    log(trained.note)
    tta = _tta_modes(args)[0]
    dataset, names, batch_size, what = _export_dataset(args, trained, tta)
    out, overlays = Path(args.export_predictions), overlay_folder(args.export_predictions, args.overlay)
    for folder in (out, overlays):
        if folder is not None:
            check_writable(folder)
    export = PredictionExport(out, names, dataset.images, overlays)
    sampler = EpochSampler(len(dataset), seed=0, shuffle=False)
    loader = make_loader(dataset, sampler, batch_size, args.num_workers, device, drop_last=False, collate_fn=collate)
    log(
        f"export: {what}, predicted at {trained.profile.describe()}, tta {tta}, written at each image's own "
        f"resolution as Cityscapes label ids to {out}/" + (f"; colour overlays to {overlays}/" if overlays else "")
    )
    start = time.perf_counter()
    metrics = evaluate_accuracy(model, loader, device, trained.classes.num_classes, tta=tta, export=export)
    clock = Throughput(export.written, time.perf_counter() - start)
    written = f"wrote {export.written} label-id PNGs to {out}/"
    log(written + (f" and {export.written} overlays to {overlays}/" if overlays else ""))
    log(f"predicted {clock.describe(device)}")
    if metrics:
        how = (
            f"val at full res, tta {tta}; the official evaluator: CITYSCAPES_DATASET={args.data_dir} "
            f"CITYSCAPES_RESULTS={args.export_predictions} csEvalPixelLevelSemanticLabeling"
        )
        log(format_scores(metrics, trained.classes.names, args.split, how))
    return metrics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict_frames(
    model: nn.Module,
    frames: Iterable[Frame],
    transform: Callable,
    device: torch.device,
    batch_size: int,
    tta: str,
    write: Callable[[Frame, torch.Tensor], None],
) -> Throughput:
    """Predict every frame at the size `transform` gives, batching consecutive frames of one size, and hand each
    prediction (H,W, the frame's own size) to `write` in order."""
    from torchvision import tv_tensors

    clock, pending = Throughput(), []

    def flush():
        _sync(device)
        tick = time.perf_counter()
        views = forward_views(model, to_model_input(torch.stack([x for _, x in pending]), device), tta)
        predictions = [scores_at(views, i, tuple(f.image.shape[-2:])).argmax(0) for i, (f, _) in enumerate(pending)]
        predictions = [p.to("cpu", torch.uint8) for p in predictions]
        _sync(device)
        clock.network_seconds += time.perf_counter() - tick
        for (frame, _), prediction in zip(pending, predictions):
            write(frame, prediction)
        clock.frames += len(pending)
        pending.clear()

    start = time.perf_counter()
    for frame in frames:
        x = transform(tv_tensors.Image(frame.image)).as_subclass(torch.Tensor)
        if pending and (x.shape != pending[0][1].shape or len(pending) == batch_size):
            flush()
        pending.append((frame, x))
    if pending:
        flush()
    clock.seconds = time.perf_counter() - start
    return clock


def run_predict(args, log: Callable[[str], None] = print) -> Throughput:
    """`--input PATH --output DIR`: class-index PNGs `DIR/<name>.png` and overlays `<name>_overlay.jpg` (beside
    them, in --overlay DIR, or none with --no-overlay) of an image or a folder of images; of a video, a PNG per frame
    `DIR/<stem>/<frame>.png` and the annotated video `<stem>_overlay.mp4`."""
    tta = _tta_modes(args)[0]
    if tta == "multiscale":
        raise UserError("--tta multiscale: not for --input (images keep their own aspect ratio); expected none or flip")
    if getattr(args, "dataset", None):
        raise UserError("--dataset: goes with --export-predictions; --input predicts images or a video")
    trained, device = _prepare(args)
    out = Path(args.output)
    source = open_input(args.input, exclude=out)
    model = backend_model(args, trained, load_trained(trained, device), device, log)
    overlays = None if args.no_overlay else Path(args.overlay) if args.overlay else out
    for folder in dict.fromkeys(f for f in (out, overlays) if f is not None):
        check_writable(folder)
    log(trained.note)
    video = source.kind == "video"
    names = f"{out}/{Path(args.input).stem}/<frame>.png" if video else f"{out}/<name>.png"
    shown = f"{overlays}/{Path(args.input).stem}_overlay.mp4" if video else f"{overlays}/<name>_overlay.jpg"
    log(
        f"predict: {source.what}, at {trained.profile.image_size[1]} px high (the width keeps each image's aspect "
        f"ratio), tta {tta}, batch {args.batch_size}: class indices 0-{trained.classes.num_classes - 1} to "
        f"{names}" + (f", overlays to {shown}" if overlays else "")
    )
    transform = KeepAspectResize(trained.profile)
    palette = trained.classes.palette_table()
    if not video:
        writer = ClassIndexExport(out, palette, overlays)
        clock = predict_frames(model, source, transform, device, args.batch_size, tta, writer.write)
    else:
        clock = _predict_video(model, source, transform, device, args, tta, out, overlays, palette)
    log(f"predicted {clock.describe(device)}")
    return clock


def _predict_video(model, source, transform, device, args, tta, out, overlays, palette) -> Throughput:
    """A video: every frame's class-index PNG, and (unless --no-overlay) the annotated video, written as it goes."""
    frames = ClassIndexExport(out, palette)
    video = (
        VideoOverlay(overlays / f"{source.path.stem}_overlay.mp4", palette, source.fps, source.av) if overlays else None
    )

    def write(frame: Frame, prediction: torch.Tensor) -> None:
        frames.write(frame, prediction)
        if video is not None:
            video.write(frame, prediction)

    try:
        clock = predict_frames(model, source, transform, device, args.batch_size, tta, write)
    except BaseException:
        if video is not None:
            video.discard()
        raise
    if video is not None:
        start = time.perf_counter()
        video.close()
        clock.seconds += time.perf_counter() - start  # the encoder's last frames are part of the work
    clock.unit = "frames"
    return clock
