"""Data set loading: label mapping, joint image/mask transforms, deterministic sampling and the loaders.

Real Cityscapes and the built-in demo data set (`demo.dataset`) go through the same code:
`torchvision.datasets.Cityscapes` (fine annotations, semantic targets) finds the files, PNGs are decoded with
`torchvision.io` (faster than PIL), label ids are mapped to train ids by a 256-entry lookup table inside the dataset
(so in the loader's worker processes), and images are resized on uint8 before any float conversion.
`--dataset camvid|folder` reads the other layouts through `training.data.layouts` (pairs sorted by path, masks
through the data set's class set), with the same transforms, cache and sampling.

Given a profile, the dataset reads its samples from a per-profile cache (`training.data.cache`): images and train ids
stored once, already resized to the profile's image size, as uncompressed arrays. The transforms start with that same
resize, which is a no-op on a cached sample, so cached and uncached samples are identical.

Randomness is a function of (seed, epoch, position in the epoch) only: the sampler draws the order and one seed per
sample, and each sample's augmentation runs under that seed. The data order and the augmentations are therefore the
same whatever the number of worker processes, and a resumed stage sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.datasets import Cityscapes
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from training.data.cache import check_room, plan_cache, prepare_cache, prepare_label_cache
from training.data.classes import CITYSCAPES, ClassSet

# the file readers and the label table live in a leaf module that the cache shares (no import circle)
from training.data.images import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_TO_TRAIN_ID,
    NUM_CLASSES,
    PALETTE,
    TRAIN_CLASSES,
    label_lookup_table,
    read_png,
    read_train_ids,
    resize,
)
from training.data.layouts import SampleReader, check_sizes, open_dataset
from training.data.photometric import MEAN, STD, PhotometricPipeline, apply_in_worker, to_model_input
from training.data.workers import ignore_stop_signals
from training.errors import UserError
from training.profiles import Profile

__all__ = [  # the names of training.data.images are re-exported: the data path's one entry point
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "LABEL_TO_TRAIN_ID",
    "NUM_CLASSES",
    "PALETTE",
    "TRAIN_CLASSES",
    "label_lookup_table",
    "read_png",
    "read_train_ids",
    "resize",
    "check_layout",
    "split_files",
    "dataset_files",
    "check_cache_room",
    "CityscapesSegmentation",
    "train_transform",
    "whole_image_transform",
    "val_transform",
    "to_model_input",
    "denormalize",
    "EpochSampler",
    "make_loader",
    "steps_per_epoch",
    "num_train_batches_check",
]


def check_layout(root: str | Path, split: str) -> None:
    """Refuse a data dir that is not in the Cityscapes layout before torchvision's own, vaguer, error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"--data-dir {root}: no such directory (expected a Cityscapes root with leftImg8bit/ and gtFine/)"
        )
    for folder in (root / "leftImg8bit" / split, root / "gtFine" / split):
        if not folder.is_dir():
            raise UserError(
                f"--data-dir {root}: missing {folder.relative_to(root)}/ "
                f"(expected the Cityscapes layout leftImg8bit/{{train,val}}/<city>/, gtFine/{{train,val}}/<city>/)"
            )


def split_files(root: str | Path, split: str) -> tuple[list[str], list[str]]:
    """The image and label files of a split (Cityscapes layout, fine annotations), checked to exist."""
    check_layout(root, split)
    files = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    if not files.images:
        raise UserError(
            f"--data-dir {root}: split '{split}' is empty (no *_leftImg8bit.png under leftImg8bit/{split}/)"
        )
    for image, (target,) in zip(files.images, files.targets):
        if not Path(target).is_file():
            raise UserError(f"image {image} has no label file (expected {target})")
    return list(files.images), [targets[0] for targets in files.targets]


def dataset_files(
    root: str | Path, split: str, dataset: str = "cityscapes"
) -> tuple[list[str], list[str], ClassSet, SampleReader | None]:
    """(images, labels, class set, reader) of a split of `dataset`: Cityscapes' files in torchvision's order, read as
    always (no reader); another layout's pairs (sorted by path, every mask the size of its image: headers only)
    with the reader of its class set."""
    if dataset == "cityscapes":
        return (*split_files(root, split), CITYSCAPES, None)
    layout = open_dataset(dataset, root)
    pairs = layout.pairs(split)
    for pair in pairs:
        check_sizes(pair)
    return [str(p.image) for p in pairs], [str(p.mask) for p in pairs], layout.classes, SampleReader(layout.classes)


def check_cache_room(
    root: str | Path,
    splits: dict[str, bool],
    profile: Profile | None = None,
    cache: bool | str = True,
    cache_dir: str | Path | None = None,
    dataset: str = "cityscapes",
) -> None:
    """Refuse (UserError, one line), before any is built, the caches of several splits that do not fit together
    where they would be written. `splits`: split -> whether its full-resolution labels are cached too (validation);
    `profile`, `cache`, `cache_dir` and `dataset` as the datasets get them (nothing to check without a profile or a
    cache)."""
    if profile is None or not cache:
        return
    plans = []
    for split, full_labels in splits.items():
        images, labels, _, reader = dataset_files(root, split, dataset)
        plans += plan_cache(root, split, images, labels, profile, full_labels, cache_dir, reader)
    check_room(plans)


class CityscapesSegmentation(Dataset):
    """Semantic segmentation of `dataset` (Cityscapes' fine labels by default; 'camvid' or 'folder' read through
    `training.data.layouts`): (image 3xHxW as the transform leaves it, int64 train-id mask HxW). `classes` is the data
    set's ClassSet. A `profile` for another data set than Cityscapes is the scaled one (`layouts.dataset_profile`).

    With `val_transform` the image is uint8 (validation and evaluation: `to_model_input` makes the model's input on
    the device, as `PhotometricPipeline.apply` does for training batches).

    Indices may be plain ints (validation) or (index, seed) pairs from `EpochSampler` (training): the sample's
    random transforms then run under that seed, independent of the worker process that loads it.

    With a `photometric` pipeline (training) a sample is (uint8 image 3xHxW, uint8 train ids HxW, float parameters
    of the photometric ops): `transform` is then the geometric part, the parameters are drawn after it under the
    same seed, and the training process applies them (`PhotometricPipeline.apply`) on its device. With
    `photometric_in_worker` the ops run here instead (CPU-only training; the image stays uint8).

    With a `profile`, samples come from the per-profile cache (built on first use, rebuilt when stale; see
    `training.data.cache.prepare_cache`): `cache=True` (or "always") uses it at every profile (it saves the PNG
    decoding even at the sources' own size), False never. `cache_dir` (--cache-dir; else $FASTSCNN_CACHE_DIR) chooses
    where it is kept. A cache that does not fit there is refused (UserError) before anything is written.

    `full_labels=True` (validation scored at the labels' own resolution, see `training.evaluation.scoring`): the
    transform sees the image only, and the mask is the label's uint8 train ids at its original size (cached too,
    uint8, where the image cache is used and all labels have one size).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: v2.Transform,
        profile: Profile | None = None,
        cache: bool | str = True,
        cache_dir: str | Path | None = None,
        photometric: PhotometricPipeline | None = None,
        photometric_in_worker: bool = False,
        full_labels: bool = False,
        dataset: str = "cityscapes",
    ):
        self.root, self.split, self.dataset = Path(root), split, dataset
        self.images, self.labels, self.classes, self.reader = dataset_files(root, split, dataset)
        self.transform = transform
        self.photometric, self.photometric_in_worker = photometric, photometric_in_worker
        self.full_labels = full_labels
        self.cache = self.label_cache = None
        if profile is not None and cache:
            # both parts refused together, before either is built, where they do not fit
            plans = plan_cache(self.root, split, self.images, self.labels, profile, full_labels, cache_dir, self.reader)
            check_room(plans)
            self.cache = prepare_cache(
                self.root,
                split,
                self.images,
                self.labels,
                profile,
                mode="always" if cache == "always" else "auto",
                cache_dir=cache_dir,
                reader=self.reader,
            )
            if full_labels and self.cache is not None:
                self.label_cache = prepare_label_cache(
                    self.root, split, self.labels, cache_dir=cache_dir, reader=self.reader
                )

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample before the transform: uint8 image 3xHxW and uint8 train ids HxW (resized when cached)."""
        if self.cache is not None:
            return self.cache.read(index)
        if self.reader is None:  # Cityscapes, read as always
            return read_png(self.images[index], ImageReadMode.RGB), read_train_ids(self.labels[index])
        return self.reader.image(self.images[index]), self.reader.mask(self.labels[index])

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        if self.full_labels:
            return self._full_resolution_item(index)
        image, mask = self.load(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        params = None
        if seed is None:
            image, mask = self.transform(image, mask)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues (slow) GPU seeding
                image, mask = self.transform(image, mask)
                if self.photometric is not None:
                    params = self.photometric.draw()
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        if self.photometric is None:
            return image, mask.long()
        if params is None:
            raise ValueError("a dataset with photometric ops yields training samples: index it with (index, seed)")
        if self.photometric_in_worker:
            image = apply_in_worker(self.photometric, image, params)
        return image, mask, params

    def _full_resolution_item(self, index: int):
        """(transformed image, or a tuple of views for test-time augmentation; uint8 train ids at the label's size)."""
        if self.cache is not None:
            image = self.cache.read(index)[0]
        elif self.reader is None:
            image = read_png(self.images[index], ImageReadMode.RGB)
        else:
            image = self.reader.image(self.images[index])
        if self.label_cache is not None:
            mask = self.label_cache.read(index)
        elif self.reader is None:
            mask = read_train_ids(self.labels[index])
        else:
            mask = self.reader.mask(self.labels[index])
        views = self.transform(tv_tensors.Image(image))
        if isinstance(views, (tuple, list)):
            return tuple(view.as_subclass(torch.Tensor) for view in views), mask
        return views.as_subclass(torch.Tensor), mask


def train_transform(profile: Profile) -> v2.Transform:
    """The original's geometric augmentation, on uint8 in the loader workers: resize to the image size, horizontal
    flip, random crop. Its colour jitter follows on the training device (`training.data.photometric`), with
    parameters drawn in the worker right after the crop, so the random draws are the original's, in its order.

    The resize comes first (on uint8, so all later work is on the small image); it commutes with the flip.
    """
    return v2.Compose(
        [
            resize(profile),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomCrop(profile.patch_hw),
        ]
    )


def whole_image_transform(profile: Profile) -> v2.Transform:
    """A test-resolution stage's training augmentation (--whole-images): the profile's whole image, flipped
    horizontally with probability 0.5; nothing else."""
    return v2.Compose([resize(profile), v2.RandomHorizontalFlip(0.5)])


def val_transform(profile: Profile) -> v2.Transform:
    """The validation image: resized to the profile's image size, still uint8 (a quarter of the float32 bytes in the
    loader's shared memory); the model's input is made on the device by `to_model_input`."""
    return resize(profile)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images (N,3,H,W) back to uint8 RGB for previews."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


class EpochSampler(Sampler):
    """Deterministic order and per-sample seeds as a function of (seed, epoch); shards across processes.

    Training (shuffle=True) yields (index, sample_seed) pairs, drops the tail so that every process gets the same
    number of samples, and can start part-way into an epoch (`start`, in samples of this process) when resuming.
    Validation (shuffle=False) yields each index exactly once over all processes (no padding): process r gets
    r, r + world_size, ...
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if self.shuffle:
            return self.size // self.world_size - self.start
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self):
        if not self.shuffle:
            yield from range(self.rank, self.size, self.world_size)
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        per_process = self.size // self.world_size
        mine = range(self.rank * per_process, (self.rank + 1) * per_process)
        for position in mine[self.start :]:
            yield order[position], seeds[position]


def _ignore_stop_signals(_worker_id: int) -> None:
    # Slurm's warning signal reaches the whole process group: the main process saves and stops the workers.
    ignore_stop_signals()
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    drop_last: bool,
    collate_fn=None,
) -> DataLoader:
    on_cuda = device.type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=on_cuda,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_stop_signals,
        prefetch_factor=4 if num_workers > 0 else None,
        # A private generator: creating the iterator must not consume the global RNG (exact resume).
        generator=torch.Generator().manual_seed(0),
    )


def steps_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    return (num_images // world_size) // batch_size


def num_train_batches_check(num_images: int, batch_size: int, world_size: int) -> None:
    if steps_per_epoch(num_images, batch_size, world_size) < 1:
        need = batch_size * world_size
        raise UserError(
            f"--batch-size {batch_size}: the training split has {num_images} images, fewer than one batch "
            f"({need} across {world_size} process(es)); expected --batch-size <= {max(1, num_images // world_size)}"
        )
