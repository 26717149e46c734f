"""Scoring as the Cityscapes benchmark does it, test-time augmentation, and the export of predictions.

The protocol (the benchmark's own evaluator, mmsegmentation, the papers): the network sees the image at the
profile's size; its logits are upsampled bilinearly (align_corners=False), in fp32, to the label's own resolution
(2048x1024 for Cityscapes), and the argmax there is scored against the original label. A perfect prediction at the
profile's size scores only 0.92-0.98 mIoU against the full-resolution labels (thin classes lose the most), so a
figure scored at the profile's size is not comparable with published ones. `--val-resolution profile` keeps that
older, cheaper score (labels nearest-resized to the profile's size) for quick runs; every figure says which it is.

One scorer serves both `Stage.validate()` (training/engine/stage.py) and `evaluate_efficiency.py`, so the stage's best
mIoU, the efficiency sheet's `miou` and the official evaluator run on the exported PNGs give one number.

- Upsampling and argmax run on the device, one image at a time (a 2048x1024 image's 19 fp32 score maps are 160 MB);
  channels_last makes the argmax over the classes read contiguous memory (2.4x faster on a CPU, measured).
- Test-time augmentation (`--tta`, evaluation tool only): `flip` adds the mirrored image, `multiscale` runs
  mmsegmentation's ratios 0.5-1.75 of the profile's size (each resized from the original image), each with its
  mirror. The views are merged at the label's size as mmsegmentation merges them: the mean of their softmax
  probabilities. A single view is scored from its logits directly (the same argmax).
- The export writes what the benchmark's server and `cityscapesscripts` read: one 8-bit single-channel PNG of
  Cityscapes *label ids* (not train ids) per image, at the image's own resolution, named after the image
  (`<city>_<seq>_<frame>_leftImg8bit.png` under `<dir>/<city>/`); optionally colour overlays for looking at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from training.data.dataset import IGNORE_INDEX, NUM_CLASSES, PALETTE, TRAIN_CLASSES, read_png, val_transform
from training.data.photometric import to_model_input
from training.engine import distributed
from training.errors import UserError
from training.metrics import ConfusionMatrix
from training.profiles import Profile

VAL_RESOLUTIONS = ("full", "profile")
TTA_MODES = ("none", "flip", "multiscale")
MULTISCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmsegmentation's Cityscapes test-time scales
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")

# train id -> Cityscapes label id, what the benchmark reads (void and unknown ids -> 0, "unlabeled")
TRAIN_ID_TO_LABEL_ID = torch.zeros(256, dtype=torch.uint8)
for _c in TRAIN_CLASSES:
    TRAIN_ID_TO_LABEL_ID[_c.train_id] = _c.id


def describe_scoring(val_resolution: str, profile: Profile | None = None) -> str:
    """How a figure was scored, for log lines: 'full res' (the labels' own size) or 'profile 576x288'."""
    if val_resolution == "full":
        return "full res"
    return "profile " + ("x".join(map(str, profile.image_size)) if profile is not None else "size")


# --------------------------------------------------------------------------------------------------------- inputs


def collate(batch: list) -> tuple:
    """Images stacked (a tuple of stacks for several views); labels (or sizes) kept as a list, as their sizes may
    differ from image to image."""
    images, targets = zip(*batch)
    if isinstance(images[0], tuple):
        return tuple(torch.stack(view) for view in zip(*images)), list(targets)
    return torch.stack(images), list(targets)


class MultiScaleViews:
    """The image at each of `ratios` x the profile's size, each resized from the original, uint8 (at ratio 1.0
    exactly what `val_transform` gives; `to_model_input` normalises them on the device)."""

    def __init__(self, profile: Profile, ratios: Sequence[float] = MULTISCALE_RATIOS):
        height, width = profile.image_hw
        self.transforms = [v2.Resize((int(height * r + 0.5), int(width * r + 0.5)), antialias=True) for r in ratios]

    def __call__(self, image):
        return tuple(transform(image) for transform in self.transforms)


def tta_transform(profile: Profile, tta: str):
    """The dataset transform of a TTA mode: the validation transform, or the multi-scale views."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: expected one of {TTA_MODES}")
    return MultiScaleViews(profile) if tta == "multiscale" else val_transform(profile)


class KeepAspectResize:
    """Resize to the profile's image height, the width following the image's own aspect ratio (for photos that are
    not 2:1), still uint8 (`to_model_input` normalises it on the device)."""

    def __init__(self, profile: Profile):
        self.height = profile.image_hw[0]

    def __call__(self, image):
        height, width = image.shape[-2:]
        size = (self.height, max(1, round(self.height * width / height)))
        return v2.functional.resize(image, list(size), antialias=True)


def read_image(path: str | Path) -> torch.Tensor:
    """Any PNG or JPEG as uint8 RGB 3xHxW (EXIF orientation applied, as photo viewers show it)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return read_png(str(path), ImageReadMode.RGB)
    from torchvision.io import decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}") from None
    except RuntimeError:
        raise UserError(f"cannot read image {path}: corrupt or not a PNG/JPEG file") from None


class ImageFiles(Dataset):
    """Images without labels (Cityscapes' test split, a folder of photos): (transformed image, its (H, W))."""

    labelled = False

    def __init__(self, paths: list[Path], names: list[Path], transform: Callable):
        self.images, self.names, self.transform = [str(p) for p in paths], list(names), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image = read_image(self.images[index])
        views = self.transform(tv_tensors.Image(image))
        size = torch.tensor(image.shape[-2:])
        if isinstance(views, (tuple, list)):
            return tuple(view.as_subclass(torch.Tensor) for view in views), size
        return views.as_subclass(torch.Tensor), size


def split_images(root: str | Path, split: str, transform: Callable) -> ImageFiles:
    """Every `leftImg8bit/<split>/<city>/*_leftImg8bit.png` of a Cityscapes root, labelled or not (the test split
    has no labels; torchvision's Cityscapes loader would need gtFine/<split>/)."""
    root = Path(root)
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise UserError(
            f"--data-dir {root}: missing leftImg8bit/{split}/ (expected the Cityscapes layout "
            f"leftImg8bit/{split}/<city>/*_leftImg8bit.png)"
        )
    paths = sorted(folder.glob("*/*_leftImg8bit.png"))
    if not paths:
        raise UserError(
            f"--data-dir {root}: split '{split}' is empty (no *_leftImg8bit.png under leftImg8bit/{split}/)"
        )
    return ImageFiles(paths, [Path(p.parent.name) / p.name for p in paths], transform)


def photo_images(folder: str | Path, profile: Profile) -> ImageFiles:
    """Every PNG/JPEG under `folder` (recursively), resized to the profile's height keeping its aspect ratio;
    predictions are named after the file, with .png."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images {folder}: no such directory (expected a folder of PNG/JPEG images)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise UserError(f"--images {folder}: no .png/.jpg/.jpeg files in it")
    return ImageFiles(paths, [p.relative_to(folder).with_suffix(".png") for p in paths], KeepAspectResize(profile))


def cityscapes_names(dataset) -> list[Path]:
    """`<city>/<image file name>` of every image of a Cityscapes dataset (what the benchmark expects)."""
    return [Path(Path(path).parent.name, Path(path).name) for path in dataset.images]


# ---------------------------------------------------------------------------------------------------- predictions


def forward_views(model: nn.Module, images, tta: str = "none") -> list[torch.Tensor]:
    """The model's fp32 logits (N,C,h,w) of every view of a batch, mirrored ones flipped back."""
    scales = images if isinstance(images, tuple) else (images,)
    views = []
    for x in scales:
        views.append(model(x).float())
        if tta in ("flip", "multiscale"):
            views.append(model(x.flip(-1)).float().flip(-1))
    return views


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C,h,w) logits in fp32 at `size` (bilinear, align_corners=False); unchanged when already at it."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    x = logits.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0]


def scores_at(views: list[torch.Tensor], index: int, size: tuple[int, int]) -> torch.Tensor:
    """Image `index`'s class scores (C,H,W) at `size`: its logits for one view; the mean softmax probability of
    several (mmsegmentation's merge)."""
    if len(views) == 1:
        return upsample(views[0][index], size)
    total = None
    for view in views:
        probabilities = upsample(view[index], size).softmax(0)
        total = probabilities if total is None else total.add_(probabilities)
    return total.div_(len(views))


class Scorer:
    """Confusion matrix, and with `loss` the cross-entropy, of class scores at the labels' own size."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str = "cpu", loss: bool = False):
        # on the device from the start: a rank without validation images still all-reduces a device tensor (NCCL)
        self.matrix = ConfusionMatrix(num_classes, IGNORE_INDEX, device=device)
        self.loss = loss
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, valid pixels

    def add(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Count one image: `scores` (C,H,W) logits at the label's size, `target` (H,W) train ids; returns the
        prediction (H,W)."""
        target = target.to(scores.device, non_blocking=True).long()
        prediction = scores.argmax(0)
        self.matrix.update(prediction, target)
        if self.loss:
            self.sums[0] += F.cross_entropy(
                scores.unsqueeze(0), target.unsqueeze(0), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            self.sums[1] += (target != IGNORE_INDEX).sum()
        return prediction

    def update(
        self, views: list[torch.Tensor], targets, keep: Callable[[int, torch.Tensor], None] | None = None
    ) -> None:
        """Score every image of a batch (`targets`: a list, or a stacked tensor), one at a time; `keep(index,
        prediction)` sees each prediction (H,W) at its label's size."""
        for index, target in enumerate(targets):
            prediction = self.add(scores_at(views, index, tuple(target.shape[-2:])), target)
            if keep is not None:
                keep(index, prediction)

    def all_reduce(self) -> None:
        self.matrix.all_reduce()
        distributed.all_reduce_sum(self.sums)

    def compute(self) -> dict:
        metrics = self.matrix.compute()
        metrics["confusion_matrix"] = self.matrix.matrix.cpu()
        if self.loss:
            metrics["valid_loss"] = float(self.sums[0] / self.sums[1].clamp(min=1))
        return metrics


def nearest(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A label (H,W) resized to `size` by nearest neighbour, on the CPU (previews show it beside the image)."""
    label = label.cpu()
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].to(label.dtype)


# -------------------------------------------------------------------------------------------------------- export


def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An HxWx3 uint8 image blended with the Cityscapes colours of its predicted train ids."""
    colours = PALETTE[train_ids].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha + 0.5).astype(np.uint8)


def _save_image(array: np.ndarray, path: Path, **options) -> None:
    """Write through a temporary file and a rename: a reader never sees a half-written prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format=options.pop("format"), **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PredictionExport:
    """Writes predictions (train ids) as label-id PNGs `<directory>/<name>` and, with `overlay_dir`, colour
    overlays `<overlay_dir>/<name stem>_overlay.jpg` of the source images."""

    def __init__(self, directory: str | Path, names: list[Path], sources: list[str], overlay_dir=None):
        self.directory, self.names, self.sources = Path(directory), list(names), list(sources)
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None
        self.written = 0

    def write(self, index: int, prediction: torch.Tensor) -> None:
        train_ids = prediction.to(torch.uint8)
        label_ids = TRAIN_ID_TO_LABEL_ID.to(train_ids.device)[train_ids.long()].cpu().numpy()
        name = self.names[index]
        _save_image(label_ids, self.directory / name, format="PNG")
        if self.overlay_dir is not None:
            image = read_image(self.sources[index]).permute(1, 2, 0).numpy()
            target = self.overlay_dir / f"{name.with_suffix('')}_overlay.jpg"
            _save_image(overlay(image, train_ids.cpu().numpy()), target, format="JPEG", quality=90)
        self.written += 1


# ---------------------------------------------------------------------------------------------- a whole data set


@torch.inference_mode()
def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    num_classes: int = NUM_CLASSES,
    tta: str = "none",
    export: PredictionExport | None = None,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict | None:
    """mIoU, per-class IoU, Dice and pixel accuracy of `model` over `loader` (batches from `collate`), scored at the
    labels' size and streamed through a ConfusionMatrix; None for a data set without labels. With `export`, every
    prediction is written as well (the loader must keep the data set's order)."""
    labelled = getattr(getattr(loader, "dataset", None), "labelled", True)
    scorer = Scorer(num_classes, device)
    seen = 0
    for images, targets in progress(loader):
        views = forward_views(model, to_model_input(images, device), tta)
        keep = (
            None if export is None else (lambda index, prediction, first=seen: export.write(first + index, prediction))
        )
        if labelled:
            scorer.update(views, targets, keep)
        elif keep is not None:  # targets are the images' sizes
            for index, size in enumerate(targets):
                keep(index, scores_at(views, index, tuple(int(v) for v in size)).argmax(0))
        seen += len(targets)
    return scorer.compute() if labelled else None


# ------------------------------------------------------------------------------------------ evaluate_efficiency.py


def accuracy_sets(
    data_dir: str | Path, profile: Profile, tta_modes: Sequence[str], val_resolution: str = "full"
) -> tuple[Dataset, dict]:
    """The plain validation set (what the deploy check uses) and the one each TTA mode is scored on (the
    multi-scale one reads the original images)."""
    from training.data.dataset import CityscapesSegmentation

    if "multiscale" in tta_modes and val_resolution != "full":
        raise UserError("--tta multiscale: scores at the labels' own resolution; expected --val-resolution full")
    full = val_resolution == "full"
    plain = CityscapesSegmentation(data_dir, "val", val_transform(profile), full_labels=full)
    sets = {}
    for mode in dict.fromkeys(tta_modes):
        sets[mode] = (
            CityscapesSegmentation(data_dir, "val", MultiScaleViews(profile), full_labels=True)
            if mode == "multiscale"
            else plain
        )
    return plain, sets


def check_export_args(args) -> None:
    """The export's flags together: one model, one TTA mode, an output folder for --images and --overlay."""
    if args.images and not args.export_predictions:
        raise UserError("--images: expected --export-predictions DIR as well (where the predictions go)")
    if args.overlay is not None and not args.export_predictions:
        raise UserError("--overlay: expected --export-predictions DIR as well")
    if not args.export_predictions:
        if args.split != "val":
            raise UserError(f"--split {args.split}: scores only val; expected --export-predictions DIR with it")
        return
    if args.all:
        raise UserError("--export-predictions: expected one model (--current-model-path), not --all")
    if len(args.tta) > 1:
        raise UserError(
            f"--export-predictions writes one set of predictions; expected one --tta mode, got {' '.join(args.tta)}"
        )
    if args.val_resolution != "full":
        raise UserError(
            "--export-predictions writes and scores at the images' own resolution; expected --val-resolution full"
        )
    if args.images and args.tta[0] == "multiscale":
        raise UserError(
            "--tta multiscale: not for --images (photos keep their own aspect ratio); expected none or flip"
        )
    if args.images and args.split != "val":
        raise UserError("--split: not with --images (a folder of photos has no splits)")


def overlay_folder(export_dir: str | Path, overlay: str | None) -> Path | None:
    """Where --overlay writes: its own value, else `<export dir>_overlay` beside the export (inside it, the official
    evaluator would find two files per image)."""
    if overlay is None:
        return None
    return Path(overlay) if overlay else Path(str(Path(export_dir)).rstrip("/") + "_overlay")


def export_predictions(model: nn.Module, args, profile: Profile, device: torch.device, log=print) -> dict | None:
    """What `evaluate_efficiency.py --export-predictions DIR` does: predict every image of the split (or of --images),
    write the label-id PNGs (and overlays), and score them where the split has labels. Returns the metrics."""
    from training.data.dataset import CityscapesSegmentation, EpochSampler, make_loader
    from training.files import check_writable

    tta = args.tta[0]
    if args.images:
        dataset = photo_images(args.images, profile)
        names, batch_size, what = dataset.names, 1, f"{len(dataset)} images of {args.images}"  # sizes differ
    elif args.split == "test":
        dataset = split_images(args.data_dir, "test", tta_transform(profile, tta))
        names, batch_size, what = dataset.names, args.batch_size, f"{len(dataset)} test images (no labels: not scored)"
    else:
        dataset = CityscapesSegmentation(args.data_dir, args.split, tta_transform(profile, tta), full_labels=True)
        names, batch_size, what = cityscapes_names(dataset), args.batch_size, f"{len(dataset)} {args.split} images"
    out, overlays = Path(args.export_predictions), overlay_folder(args.export_predictions, args.overlay)
    for folder in (out, overlays):
        if folder is not None:
            check_writable(folder)
    export = PredictionExport(out, names, dataset.images, overlays)
    loader = make_loader(
        dataset,
        EpochSampler(len(dataset), seed=0, shuffle=False),
        batch_size,
        args.num_workers,
        device,
        drop_last=False,
        collate_fn=collate,
    )
    log(
        f"export: {what}, predicted at {profile.describe()}, tta {tta}, written at each image's own resolution as "
        f"Cityscapes label ids to {out}/" + (f"; colour overlays to {overlays}/" if overlays else "")
    )
    metrics = evaluate_accuracy(model.eval(), loader, device, tta=tta, export=export)
    log(
        f"wrote {export.written} label-id PNGs to {out}/"
        + (f" and {export.written} overlays to {overlays}/" if overlays else "")
    )
    return metrics
