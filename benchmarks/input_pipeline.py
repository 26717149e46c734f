"""Throughput of the training input pipeline (samples/s), optionally against a re-creation of the original's.

    python benchmarks/input_pipeline.py --data-dir data/cityscapes --profile low --num-workers 8 --batches 50
    python benchmarks/input_pipeline.py --data-dir /tmp/demo --profile 1 --num-workers 2 --batches 20 \
        --baseline original

The training loader is built as the stage builds it (`training/engine/build.py`: the dataset with its per-profile cache,
`training.data.transforms.train_pipeline`, the photometric ops' parameters drawn per sample, `EpochSampler`,
`make_loader`): workers ship uint8 images and masks, and the photometric ops (colour jitter), float conversion and
normalisation run on the training device, timed separately on a batch (`--photometric workers` applies them in the
workers instead, as CPU-only training does). The bytes of one batch are printed. Building or checking the cache
is timed on its own; then
`--warmup` batches start the workers and `--batches` batches are timed. A small data set is repeated so that the
timed batches fall inside one epoch, as they do with the 2975 Cityscapes training images.

`--baseline original` also times a re-creation of the original project's pipeline: PIL decodes the full-size PNGs
in the dataset, the image becomes a float tensor (ToTensor) and is resized at full size, the same flip / crop /
colour jitter (torchvision's, on float) and normalisation follow, and the label ids of each batch are mapped to
train ids per pixel with `Tensor.apply_` in the main process. The last line is always `samples/s: X` (ours).

`--augment mmseg` times the pipeline with mmseg's augmentation (training/data/transforms.py: geometry in the workers,
PhotoMetricDistortion on the device) instead of the original's; `--compare-augment` times both in one run (the
chosen one, the other, the chosen one again) and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from training.data.dataset import (  # noqa: E402
    MEAN,
    STD,
    CityscapesSegmentation,
    EpochSampler,
    label_lookup_table,  # noqa: E402
    make_loader,
)
from training.data.layouts import DATASETS, dataset_profile, native_size  # noqa: E402
from training.data.photometric import PhotometricPipeline, apply_in_worker  # noqa: E402
from training.data.transforms import train_pipeline  # noqa: E402
from training.errors import UserError, run_cli  # noqa: E402
from training.profiles import resolve_profile  # noqa: E402


class Repeated(Dataset):
    """`dataset` cycled to `length` samples; (index, seed) items keep their seed."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        index, seed = item
        return self.dataset[(index % len(self.dataset), seed)]


class OriginalPipeline(Dataset):
    """The original project's training data path, re-created: PIL decode at full size, float resize at full size,
    the same augmentations on float tensors; the labels come back as Cityscapes label ids (mapped by the caller)."""

    def __init__(self, images: list[str], labels: list[str], profile):
        from torchvision import transforms as T

        self.images, self.labels, self.profile = images, labels, profile
        self.jitter = T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            image = TF.to_tensor(Image.open(self.images[index]).convert("RGB"))  # float 3xHxW, full size
            label = torch.from_numpy(np.array(Image.open(self.labels[index]), dtype=np.uint8))[None]
            image = TF.resize(image, list(self.profile.image_hw), antialias=True)
            label = TF.resize(label, list(self.profile.image_hw), interpolation=InterpolationMode.NEAREST)
            if torch.rand(1).item() < 0.5:
                image, label = TF.hflip(image), TF.hflip(label)
            height, width = self.profile.patch_hw
            top = int(torch.randint(0, image.shape[1] - height + 1, (1,)))
            left = int(torch.randint(0, image.shape[2] - width + 1, (1,)))
            image, label = TF.crop(image, top, left, height, width), TF.crop(label, top, left, height, width)
            image = TF.normalize(self.jitter(image), MEAN, STD)
        return image, label[0]


_ORIGINAL_TABLE = label_lookup_table().tolist()


def original_map_labels(label_ids: torch.Tensor) -> torch.Tensor:
    """The original's label mapping: a Python call per pixel."""
    return label_ids.long().apply_(lambda value: _ORIGINAL_TABLE[value])


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    tuned = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    return "glibc malloc" + (f" ({tuned})" if tuned else " (default settings)")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def time_loader(loader, sampler, warmup: int, batches: int, map_labels=None) -> tuple[float, int, tuple]:
    """Seconds for `batches` batches after `warmup` ones, the samples they held, and the last batch."""
    sampler.set_epoch(0)
    iterator = iter(loader)
    for _ in range(warmup):
        batch = next(iterator)
        if map_labels is not None:
            map_labels(batch[1])
    samples = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if map_labels is not None:
            batch = (batch[0], map_labels(batch[1]), *batch[2:])
        samples += batch[0].shape[0]
    return time.perf_counter() - start, samples, batch


def batch_bytes(batch: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in batch)


def time_photometric(
    batch: tuple, device: torch.device, pipeline: PhotometricPipeline, repeats: int = 3
) -> tuple[float, float]:
    """ms per sample of the photometric ops + normalisation: on `device` for the whole batch (as the stage does),
    and per sample in one thread (as a CPU-only run's loader workers do)."""
    images, params = batch[0].to(device), batch[2]
    pipeline.apply(images, params)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        pipeline.apply(images, params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for image, sample_params in zip(batch[0], params):
            apply_in_worker(pipeline, image, sample_params)
        worker = (time.perf_counter() - start) / len(params)
    finally:
        torch.set_num_threads(threads)
    return 1000 * best / len(params), 1000 * worker


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="benchmarks/input_pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the data set's root (Cityscapes: leftImg8bit/, gtFine/)")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="cityscapes",
        help="its layout, as the scripts' --dataset (default cityscapes)",
    )
    parser.add_argument("--profile", default="low", help="resolution profile, name or number (default low)")
    parser.add_argument("--num-workers", type=int, default=8, help="loader worker processes (default 8)")
    parser.add_argument("--batches", type=int, default=20, help="batches timed after the warm-up (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32, as the scripts)")
    parser.add_argument("--warmup", type=int, default=None, help="batches before timing (default max(2, workers))")
    parser.add_argument("--no-cache", action="store_true", help="decode the source PNGs every time, as --no-cache")
    parser.add_argument(
        "--cache",
        choices=("auto", "always"),
        default="auto",
        help="auto: cache where it pays, as the scripts (default); always: at any profile",
    )
    parser.add_argument("--cache-dir", default=None, help="keep the cache here instead of the default location")
    parser.add_argument(
        "--baseline",
        choices=("original",),
        default=None,
        help="also time a re-creation of the original pipeline and print the ratio",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="pinned memory as in training on cuda (default cpu)"
    )
    parser.add_argument(
        "--augment",
        choices=("original", "mmseg"),
        default="original",
        help="the training augmentation, as the scripts' --augment (default original)",
    )
    parser.add_argument(
        "--compare-augment",
        action="store_true",
        help="also time the other --augment in the same run and print the ratio",
    )
    parser.add_argument(
        "--photometric",
        choices=("device", "workers"),
        default="device",
        help="where the photometric ops run: on the training device (GPU training, default) or in "
        "the loader workers (CPU-only training)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = parser.parse_args(argv)
    for name in ("num_workers", "batches", "batch_size", "warmup"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("num_workers", "warmup") else 1):
            raise UserError(
                f"--{name.replace('_', '-')} {value}: expected a whole number >= "
                f"{0 if name in ('num_workers', 'warmup') else 1}"
            )
    if args.baseline == "original" and args.dataset != "cityscapes":
        raise UserError(
            "--baseline original: re-creates the original's Cityscapes pipeline; expected --dataset cityscapes"
        )
    profile = dataset_profile(resolve_profile(args.profile), args.dataset, native_size(args.dataset, args.data_dir))
    warmup = args.warmup if args.warmup is not None else max(2, args.num_workers)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine")
    length = (warmup + args.batches) * args.batch_size

    print(
        f"input pipeline: {profile.describe()} | augment {args.augment} | {args.num_workers} workers, "
        f"batch {args.batch_size}, "
        f"{warmup} warm-up + {args.batches} timed batches | {cores()} cores available | torch {torch.__version__} | "
        f"{platform.python_implementation()} {platform.python_version()} | {allocator()}",
        flush=True,
    )

    start = time.perf_counter()
    transform, photometric = train_pipeline(profile, args.augment)
    dataset = CityscapesSegmentation(
        args.data_dir,
        "train",
        transform,
        profile=profile,
        cache=False if args.no_cache else args.cache,
        cache_dir=args.cache_dir,
        photometric=photometric,
        photometric_in_worker=args.photometric == "workers",
        dataset=args.dataset,
    )
    seconds = time.perf_counter() - start
    if dataset.cache is None:
        print(f"cache: not used (--no-cache); dataset set up in {seconds:.2f} s", flush=True)
    else:
        print(
            f"cache: {dataset.cache.directory} ready after {seconds:.2f} s (build or check; not part of the timing)",
            flush=True,
        )
    repeated = f" (repeated to {length} samples: the timed batches fall in one epoch)" if len(dataset) < length else ""
    print(f"data: {len(dataset)} training images in {args.data_dir}{repeated}", flush=True)

    last = {}

    def run(what: str, data: Dataset, map_labels=None) -> float:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        size = max(length, len(data))
        sampler = EpochSampler(size, args.seed, True)
        loader = make_loader(Repeated(data, size), sampler, args.batch_size, args.num_workers, device, drop_last=True)
        seconds, samples, last[what] = time_loader(loader, sampler, warmup, args.batches, map_labels)
        del loader  # stops its workers before the next run starts its own
        print(
            f"{what}: {samples} samples in {seconds:.2f} s: {samples / seconds:.1f} samples/s "
            f"({batch_bytes(last[what]) / 2**20:.1f} MiB a batch)",
            flush=True,
        )
        return samples / seconds

    ours = run("ours", dataset)
    if args.photometric == "device":
        on_device, in_worker = time_photometric(last["ours"], device, photometric)
        print(
            f"photometric ops + normalisation: {on_device:.2f} ms a sample on {device} (batch of {args.batch_size}, "
            f"{torch.get_num_threads()} threads; not in the figure above), {in_worker:.2f} ms a sample in one "
            f"thread as a loader worker would",
            flush=True,
        )
    if args.compare_augment:
        import copy

        other_augment = "mmseg" if args.augment == "original" else "original"
        other = copy.copy(dataset)  # the same files and cache, the other augmentation
        other.transform, other.photometric = train_pipeline(profile, other_augment)
        other_rate = run(f"ours with --augment {other_augment}", other)
        ours = (ours + run("ours (again)", dataset)) / 2
        print(
            f"ratio --augment {args.augment} / {other_augment}: {ours / other_rate:.2f}x (per worker: "
            f"{ours / max(args.num_workers, 1):.1f} vs {other_rate / max(args.num_workers, 1):.1f} samples/s"
            f"{'' if args.photometric == 'workers' else '; the photometric ops run on the device, not timed here'})",
            flush=True,
        )
    if args.baseline == "original":
        # ours, original, ours again: a change in the machine's load during the run evens out in the ratio
        base = run(
            "original (re-created)", OriginalPipeline(dataset.images, dataset.labels, profile), original_map_labels
        )
        ours = (ours + run("ours (again)", dataset)) / 2
        print(f"ratio ours / original: {ours / base:.1f}x (ours: mean of both runs, {ours:.1f} samples/s)", flush=True)
    print(f"samples/s: {ours:.1f}", flush=True)
    return ours


if __name__ == "__main__":
    run_cli(main)
