"""The training dataset on CamVid and folder sets (`--dataset`): samples against the files read by hand with Pillow,
cached samples equal to uncached ones, the cache recording the class set (Cityscapes' manifest unchanged), the
profile scaled to the data set's native size, a mask of another size refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from demo.dataset import make_demo_dataset
from training.data.cache import MANIFEST
from training.data.classes import CAMVID, CITYSCAPES
from training.data.dataset import CityscapesSegmentation
from training.data.layouts import dataset_profile, native_size
from training.errors import UserError
from training.profiles import resolve_profile

SIZE = (96, 72)  # 4:3, small for speed
NO_TRANSFORM = v2.Identity()


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    common = {"num_train": 3, "num_val": 2, "seed": 5, "size": SIZE}
    return {
        "camvid": make_demo_dataset(root / "camvid", **common, layout="camvid"),
        "folder": make_demo_dataset(root / "folder", **common, layout="folder"),
        "colours": make_demo_dataset(root / "colours", **common, layout="folder", mask_colours=True),
    }


def by_hand(dataset: str, mask: Path, classes_file: Path | None = None) -> np.ndarray:
    """A mask file as train ids, read with Pillow and mapped here: CamVid 0-10 classes and 11 void; a folder's index
    masks as they are (void 255); colour masks through classes.json's palette, black void."""
    pixels = np.asarray(Image.open(mask))
    if dataset == "camvid":
        return np.where(pixels == 11, 255, pixels).astype(np.uint8)
    if pixels.ndim == 2:
        return pixels.astype(np.uint8)
    palette = json.loads(classes_file.read_text())["palette"]
    ids = np.full(pixels.shape[:2], 255, dtype=np.uint8)
    for index, colour in enumerate(palette):
        ids[(pixels[..., :3] == colour).all(-1)] = index
    return ids


@pytest.mark.parametrize("name", ["camvid", "folder", "colours"])
def test_samples_are_the_files_read_by_hand_cached_or_not(sets, name, tmp_path):
    root = sets[name]
    dataset = "camvid" if name == "camvid" else "folder"
    plain = CityscapesSegmentation(root, "train", NO_TRANSFORM, dataset=dataset)
    profile = dataset_profile(resolve_profile("highest"), dataset, native_size(dataset, root))
    cached = CityscapesSegmentation(root, "train", NO_TRANSFORM, profile=profile, cache_dir=tmp_path, dataset=dataset)
    assert cached.cache is not None and len(plain) == len(cached) == 3
    assert plain.classes.num_classes == (11 if name == "camvid" else 5)
    for index in range(len(plain)):
        image, mask = plain.load(index)
        expected_image = np.asarray(Image.open(plain.images[index]).convert("RGB"))
        tolerance = 0 if plain.images[index].endswith(".png") else 1.0  # JPEG: two decoders, within rounding
        assert np.abs(image.permute(1, 2, 0).numpy().astype(float) - expected_image).mean() <= tolerance
        assert np.array_equal(mask.numpy(), by_hand(dataset, Path(plain.labels[index]), root / "classes.json"))
        again = cached.load(index)  # the profile's size is the native size here: the cache holds the same pixels
        assert torch.equal(again[0], image) and torch.equal(again[1], mask)
    assert len(np.unique(np.concatenate([plain.load(i)[1].numpy().ravel() for i in range(3)]))) >= 3


def test_colour_masks_give_the_same_train_ids_as_index_masks_of_the_same_scenes(sets):
    index_masks = CityscapesSegmentation(sets["folder"], "val", NO_TRANSFORM, dataset="folder")
    colour_masks = CityscapesSegmentation(sets["colours"], "val", NO_TRANSFORM, dataset="folder")
    for i in range(len(index_masks)):
        assert torch.equal(index_masks.load(i)[1], colour_masks.load(i)[1])


def test_the_cache_records_the_class_set_and_cityscapes_manifest_is_unchanged(sets, tiny_cityscapes, tmp_path):
    profile = dataset_profile(resolve_profile("low"), "camvid", native_size("camvid", sets["camvid"]))
    CityscapesSegmentation(
        sets["camvid"], "val", NO_TRANSFORM, profile=profile, cache_dir=tmp_path / "a", dataset="camvid"
    )
    (manifest,) = (tmp_path / "a").rglob(MANIFEST)
    assert json.loads(manifest.read_text())["classes"] == CAMVID.to_dict()
    CityscapesSegmentation(
        tiny_cityscapes, "val", NO_TRANSFORM, profile=resolve_profile("low"), cache_dir=tmp_path / "b"
    )
    (manifest,) = (tmp_path / "b").rglob(MANIFEST)
    assert "classes" not in json.loads(manifest.read_text())  # caches built before --dataset stay valid


def test_a_changed_classes_file_rebuilds_the_cache(sets, tmp_path):
    root = Path(shutil.copytree(sets["folder"], tmp_path / "folder"))
    profile = resolve_profile("highest")
    first = CityscapesSegmentation(
        root, "train", NO_TRANSFORM, profile=profile, cache_dir=tmp_path / "c", dataset="folder"
    )
    before = first.load(0)[1]
    classes = json.loads((root / "classes.json").read_text())
    classes["classes"][0] = "street"  # same indices, another name: another class set, another cache key
    (root / "classes.json").write_text(json.dumps(classes))
    second = CityscapesSegmentation(
        root, "train", NO_TRANSFORM, profile=profile, cache_dir=tmp_path / "c", dataset="folder"
    )
    assert second.classes.names[0] == "street" and torch.equal(second.load(0)[1], before)
    (manifest,) = (tmp_path / "c").rglob(MANIFEST)
    assert json.loads(manifest.read_text())["classes"]["classes"][0] == "street"


def test_the_profile_is_scaled_to_the_native_size_and_cityscapes_keeps_its_table(sets, tiny_cityscapes):
    low = resolve_profile("low")
    assert native_size("camvid", sets["camvid"]) == SIZE
    scaled = dataset_profile(low, "camvid", SIZE)  # 96 x 576/2048 = 27, 72 x 288/1024 = 20.25
    assert (scaled.image_size, scaled.patch_size) == ((27, 20), (27, 20))  # the patch at most the image
    assert dataset_profile(low, "cityscapes", native_size("cityscapes", tiny_cityscapes)) == low
    assert CITYSCAPES.to_dict()["dataset"] == "cityscapes"


def test_a_mask_of_another_size_than_its_image_is_refused_naming_it(sets, tmp_path):
    root = Path(shutil.copytree(sets["camvid"], tmp_path / "camvid"))
    mask = sorted((root / "valannot").iterdir())[0]
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(mask)
    with pytest.raises(UserError, match=rf"{mask.name}: 10x10 pixels, its image .* 96x72; expected the same size"):
        CityscapesSegmentation(root, "val", NO_TRANSFORM, dataset="camvid")
