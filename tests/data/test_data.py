"""training.data.dataset: the label table, joint transforms (alignment, nearest-neighbour masks) and the one-line errors
for bad data (the colour jitter, applied on the training device: tests/data/test_device_augment.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import Cityscapes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from training.data.dataset import (
    IGNORE_INDEX,
    NUM_CLASSES,
    CityscapesSegmentation,
    denormalize,
    label_lookup_table,
    read_train_ids,
    train_transform,
    val_transform,
)
from training.data.photometric import original_photometric
from training.errors import UserError
from training.profiles import Profile

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]  # torchvision 0.29


def write_sample(root: Path, split: str, stem: str, image: np.ndarray, label_ids: np.ndarray, city: str = "testcity"):
    """One image (HxWx3 uint8) and its label ids (HxW uint8) in the Cityscapes layout."""
    image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_dir / f"{city}_{stem}_000019_leftImg8bit.png")
    Image.fromarray(label_ids).save(label_dir / f"{city}_{stem}_000019_gtFine_labelIds.png")
    return image_dir / f"{city}_{stem}_000019_leftImg8bit.png", label_dir / f"{city}_{stem}_000019_gtFine_labelIds.png"


def blocks(seed: int, height: int, width: int, values, block: int = 4) -> np.ndarray:
    """A random pattern of `block` x `block` squares drawing from `values`."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.asarray(values, dtype=np.uint8), size=(height // block, width // block))
    return np.kron(coarse, np.ones((block, block), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------- label table
def test_label_lookup_table_matches_torchvision_for_every_id():
    table = label_lookup_table()
    by_id = {c.id: c for c in Cityscapes.classes}
    for label_id in range(256):
        if label_id in by_id:
            train_id = by_id[label_id].train_id
            expected = train_id if 0 <= train_id < IGNORE_INDEX else IGNORE_INDEX
        elif label_id == IGNORE_INDEX:
            expected = IGNORE_INDEX
        else:
            expected = 254  # not a Cityscapes id: read_train_ids refuses it
        assert table[label_id] == expected, label_id
    assert sorted(set(table.tolist()) - {254, 255}) == list(range(NUM_CLASSES))
    assert all(table[i] != 254 for i in range(34)) and all(table[i] == 254 for i in range(34, 255))


def test_read_train_ids_maps_every_valid_id(tmp_path):
    ids = np.array([list(range(34)) + [255, 0]], dtype=np.uint8).repeat(2, axis=0)
    path = tmp_path / "x_gtFine_labelIds.png"
    Image.fromarray(ids).save(path)
    assert torch.equal(read_train_ids(str(path)), torch.from_numpy(label_lookup_table()[ids]))


# ------------------------------------------------------------------------------------------------- transforms
def identity_profile(width: int, height: int, patch: tuple[int, int]) -> Profile:
    return Profile("test", 0, (width, height), patch)


@pytest.mark.parametrize("cache", [False, "always"])
def test_training_transform_keeps_image_and_mask_aligned(tmp_path, cache):
    """A grey two-level image drawn from its mask: after flip, crop and jitter the mask is still recoverable from the
    image (jitter keeps grey grey and the order of levels), and it is a flipped/unflipped crop of the source."""
    height, width, patch = 32, 64, (40, 24)  # patch W x H
    label_ids = blocks(1, height, width, [7, 8])  # road (train id 0), sidewalk (train id 1)
    grey = np.where(label_ids == 8, 200, 40).astype(np.uint8)
    write_sample(tmp_path, "train", "000000", np.stack([grey] * 3, axis=-1), label_ids)
    source = torch.from_numpy(label_lookup_table()[label_ids]).long()
    profile = identity_profile(width, height, patch)
    photometric = original_photometric()
    dataset = CityscapesSegmentation(
        tmp_path,
        "train",
        train_transform(profile),
        profile=profile,
        cache=cache,
        cache_dir=tmp_path / "cache",
        photometric=photometric,
    )
    flips, offsets = set(), set()
    for seed in range(24):
        image, mask, params = dataset[(0, seed)]
        assert image.shape == (3, patch[1], patch[0]) and image.dtype == torch.uint8
        assert mask.shape == (patch[1], patch[0]) and mask.dtype == torch.uint8
        mask = mask.long()
        pixels = denormalize(photometric.apply(image[None], params[None]))[0].float().mean(0)
        threshold = (pixels.max() + pixels.min()) / 2
        assert torch.equal((pixels > threshold).long(), mask), seed
        found = [
            (flip, top, left)
            for flip in (False, True)
            for top in range(height - patch[1] + 1)
            for left in range(width - patch[0] + 1)
            if torch.equal((source.flip(-1) if flip else source)[top : top + patch[1], left : left + patch[0]], mask)
        ]
        assert found, seed
        flips.add(found[0][0])
        offsets.add(found[0][1:])
    assert flips == {False, True} and len(offsets) > 5


def test_same_seed_gives_same_training_sample(tiny_cityscapes):
    profile = identity_profile(256, 128, (192, 96))
    dataset = CityscapesSegmentation(tiny_cityscapes, "train", train_transform(profile))
    first, again, other = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("cache", [False, "always"])
def test_validation_resize_of_masks_is_nearest_neighbour(tmp_path, cache):
    label_ids = blocks(2, 60, 100, [7, 8, 26, 0], block=1)  # train ids 0, 1, 13 and void, changing every pixel
    image = np.random.default_rng(3).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    write_sample(tmp_path, "val", "000000", image, label_ids)
    profile = identity_profile(37, 23, (37, 23))  # odd factors: a linear resize would blend neighbours
    dataset = CityscapesSegmentation(
        tmp_path, "val", val_transform(profile), profile=profile, cache=cache, cache_dir=tmp_path / "cache"
    )
    image_out, mask = dataset[0]
    assert image_out.shape == (3, 23, 37) and mask.shape == (23, 37)
    assert set(mask.unique().tolist()) <= {0, 1, 13, IGNORE_INDEX}
    source = tv_tensors.Mask(torch.from_numpy(label_lookup_table()[label_ids]))
    expected = F.resize(source, [23, 37], interpolation=v2.InterpolationMode.NEAREST)
    assert torch.equal(mask, expected.long())


# ------------------------------------------------------------------------------------------------- bad data
def copy_tiny(tiny_cityscapes, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_cityscapes, root)
    return root


def first(root: Path, kind: str, split: str = "train") -> Path:
    pattern = "*_leftImg8bit.png" if kind == "image" else "*_gtFine_labelIds.png"
    return sorted((root / ("leftImg8bit" if kind == "image" else "gtFine") / split).rglob(pattern))[0]


def profile_low() -> Profile:
    from training.profiles import resolve_profile

    return resolve_profile("low")


def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: no such directory"):
        CityscapesSegmentation(tmp_path / "nowhere", "train", val_transform(profile_low()))


def test_missing_layout(tiny_cityscapes, tmp_path):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(UserError, match=r"missing gtFine/val/") as error:
        CityscapesSegmentation(root, "val", val_transform(profile_low()))
    assert str(root) in str(error.value) and "\n" not in str(error.value)


def test_empty_split(tmp_path):
    for folder in ("leftImg8bit/train/city", "gtFine/train/city"):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(UserError, match=r"split 'train' is empty") as error:
        CityscapesSegmentation(tmp_path, "train", val_transform(profile_low()))
    assert str(tmp_path) in str(error.value)


def test_image_without_label_file(tiny_cityscapes, tmp_path):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    label = first(root, "label")
    label.unlink()
    with pytest.raises(UserError, match="has no label file") as error:
        CityscapesSegmentation(root, "train", val_transform(profile_low()))
    assert str(label) in str(error.value)


@pytest.mark.parametrize("cache", [False, "always"])
def test_corrupt_png(tiny_cityscapes, tmp_path, cache):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    image = first(root, "image")
    image.write_bytes(image.read_bytes()[:200])  # a truncated file
    profile = profile_low()
    with pytest.raises(UserError, match="cannot read PNG") as error:
        dataset = CityscapesSegmentation(
            root, "train", val_transform(profile), profile=profile, cache=cache, cache_dir=tmp_path / "cache"
        )
        index = [Path(p) for p in dataset.images].index(image)
        dataset[index]
    assert str(image) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("cache", [False, "always"])
def test_label_ids_outside_cityscapes(tiny_cityscapes, tmp_path, cache):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    label = first(root, "label")
    ids = np.array(Image.open(label))
    ids[3:5, 3:5] = 40
    Image.fromarray(ids).save(label)
    profile = profile_low()
    with pytest.raises(UserError, match=r"label ids \[40\] are not Cityscapes ids \(expected 0-33 or 255\)") as error:
        dataset = CityscapesSegmentation(
            root, "train", val_transform(profile), profile=profile, cache=cache, cache_dir=tmp_path / "cache"
        )
        index = [Path(p) for p in dataset.labels].index(label)
        dataset[index]
    assert str(label) in str(error.value)
