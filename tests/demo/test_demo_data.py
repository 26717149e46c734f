"""The synthetic demo set: Cityscapes layout, read by torchvision's Cityscapes loader, valid label ids, enough
classes, deterministic, generated once."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from demo.dataset import (
    MANIFEST_NAME,
    TRAIN_CITIES,
    VAL_CITIES,
    DemoDataError,
    ensure_demo_dataset,
    main,
    make_demo_dataset,
)

SMALL = {"num_train": 4, "num_val": 2, "size": (256, 128), "seed": 0}
COUNTS = {"train": 4, "val": 2}
CLASSES = torchvision.datasets.Cityscapes.classes
VALID_IDS = {c.id for c in CLASSES if 0 <= c.id <= 33}
TRAIN_CLASS_IDS = {c.id for c in CLASSES if c.train_id not in (255, -1)}
VOID_IDS = {c.id for c in CLASSES if c.category == "void" and c.id >= 0}
OLD = 1_000_000_000  # an mtime (2001) no file written by a test run has


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), **SMALL)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label map) of a split, paired by the Cityscapes naming rule."""
    result = []
    for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        result.append((image, root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"))
    return result


def labels(root: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(label)) for split in COUNTS for _, label in pairs(root, split)]


def age(root: Path) -> None:
    for path in files(root):
        os.utime(path, ns=(OLD * 10**9, OLD * 10**9))


def test_layout_and_names_are_those_of_cityscapes(demo):
    assert make_demo_dataset(demo, **SMALL) == demo
    assert (demo / MANIFEST_NAME).is_file()
    for split, cities in (("train", TRAIN_CITIES), ("val", VAL_CITIES)):
        image_dir, label_dir = demo / "leftImg8bit" / split, demo / "gtFine" / split
        found = sorted(p.name for p in image_dir.iterdir())
        assert found == sorted(p.name for p in label_dir.iterdir())
        assert set(found) <= set(cities) and len(found) >= 2, f"{split}: cities {found}"
        images = [p for city in found for p in (image_dir / city).iterdir()]
        assert len(images) == COUNTS[split]
        for image in images:
            match = re.fullmatch(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png", image.name)
            assert match and match.group(1) == image.parent.name, image.name
        label_names = sorted(p.name for city in found for p in (label_dir / city).iterdir())
        assert label_names == sorted(
            f"{p.parent.name}_{p.name.split('_')[1]}_{p.name.split('_')[2]}_gtFine_labelIds.png" for p in images
        )
        for image, label in pairs(demo, split):
            with Image.open(image) as im, Image.open(label) as lab:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", SMALL["size"])
                assert (lab.format, lab.mode, lab.size) == ("PNG", "L", SMALL["size"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_torchvision_cityscapes_loader_reads_it(demo, split):
    dataset = torchvision.datasets.Cityscapes(str(demo), split=split, mode="fine", target_type="semantic")
    assert len(dataset) == COUNTS[split]
    image, target = dataset[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == SMALL["size"]
    assert isinstance(target, Image.Image) and target.mode == "L" and target.size == SMALL["size"]


def test_label_ids_are_cityscapes_ids_with_enough_classes(demo):
    maps = labels(demo)
    assert len(maps) == sum(COUNTS.values())
    seen = set()
    for label in maps:
        ids = set(np.unique(label).tolist())
        assert ids <= VALID_IDS, f"invalid label ids {sorted(ids - VALID_IDS)}"
        assert len(ids & TRAIN_CLASS_IDS) >= 6, f"only train classes {sorted(ids & TRAIN_CLASS_IDS)} in an image"
        seen |= ids
    assert len(seen & TRAIN_CLASS_IDS) >= 10, sorted(seen & TRAIN_CLASS_IDS)
    assert seen & VOID_IDS, "no void ids (unlabeled, ego vehicle, out of roi, static, ...) anywhere"


def test_image_and_label_map_are_aligned(demo):
    """The image changes much more where the label changes than inside regions; not so for a shifted label map."""
    for split in COUNTS:
        for image_path, label_path in pairs(demo, split):
            image = np.asarray(Image.open(image_path)).astype(np.float32)
            label = np.asarray(Image.open(label_path))
            step = np.abs(image[:, 1:] - image[:, :-1]).sum(-1)
            ratios = []
            for shift in (0, 3):
                shifted = np.roll(label, shift, axis=1)
                edge = shifted[:, 1:] != shifted[:, :-1]
                ratios.append(step[edge].mean() / step[~edge].mean())
            assert ratios[0] > 3.0 and ratios[0] > 2 * ratios[1], (image_path.name, ratios)


def test_same_seed_gives_identical_files_and_another_seed_differs(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", **SMALL)
    ours, theirs = files(demo), files(again)
    assert [p.relative_to(demo) for p in ours] == [p.relative_to(again) for p in theirs]
    for a, b in zip(ours, theirs):
        assert a.read_bytes() == b.read_bytes(), a.relative_to(demo)
    other = make_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    for split in COUNTS:
        for (a, _), (b, _) in zip(pairs(demo, split), pairs(other, split)):
            assert a.name == b.name and a.read_bytes() != b.read_bytes()


def test_second_call_reuses_the_set_without_rewriting(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "demo", **SMALL)
    age(root)
    assert ensure_demo_dataset(root, **SMALL) == root
    assert "reusing" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == OLD * 10**9 for p in files(root))


def test_missing_manifest_or_other_parameters_regenerate(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "demo", **SMALL)
    expected = {p.relative_to(root): p.read_bytes() for p in files(root)}
    # an interrupted generation: no manifest, an image missing
    (root / MANIFEST_NAME).unlink()
    pairs(root, "train")[0][0].unlink()
    age(root)
    ensure_demo_dataset(root, **SMALL)
    assert "generated" in capsys.readouterr().out
    assert {p.relative_to(root): p.read_bytes() for p in files(root)} == expected
    assert all(p.stat().st_mtime_ns != OLD * 10**9 for p in files(root))
    # other parameters: the old set is replaced, not mixed in
    make_demo_dataset(root, **{**SMALL, "num_train": 2, "num_val": 1})
    assert (len(pairs(root, "train")), len(pairs(root, "val"))) == (2, 1)
    assert json.loads((root / MANIFEST_NAME).read_text())["params"]["num_train"] == 2


def test_refuses_a_folder_with_data_it_did_not_write(tmp_path):
    foreign = tmp_path / "cityscapes" / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"real data")
    with pytest.raises(DemoDataError, match="did not write"):
        make_demo_dataset(tmp_path / "cityscapes", **SMALL)
    assert foreign.read_bytes() == b"real data"


@pytest.mark.parametrize("bad", [{"num_train": -1}, {"size": (16, 8)}, {"seed": -3}, {"num_train": 0, "num_val": 0}])
def test_bad_parameters_are_user_errors(tmp_path, bad):
    with pytest.raises(DemoDataError):
        make_demo_dataset(tmp_path / "demo", **{**SMALL, **bad})
    assert not (tmp_path / "demo").exists()


def test_command_line(tmp_path, capsys):
    root = tmp_path / "cli"
    main(["--root", str(root), "--train", "3", "--val", "2", "--size", "128x64", "--seed", "5"])
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    with Image.open(pairs(root, "val")[0][0]) as image:
        assert image.size == (128, 64)
    main(["--root", str(root), "--train", "3", "--val", "2", "--size", "128x64", "--seed", "5"])
    assert "nothing written" in capsys.readouterr().out
    with pytest.raises(DemoDataError, match="--size"):
        main(["--root", str(root), "--size", "128by64"])


# sha256 of the decoded pixels of a small set, recorded before the scene painter was split into one function per
# layer (demo/scene.py): the split, and any later tidying of the painter, must not change a single pixel.
PAINTER_PIXELS_SHA256 = "a5a2435762726745d62855e1900c31c66a0bc145908faa5dec6ceebbe43d4f6e"


def test_painter_output_is_unchanged_for_a_fixed_seed(tmp_path):
    import hashlib

    root = make_demo_dataset(tmp_path / "set", num_train=3, num_val=2, size=(320, 160), seed=7)
    digest = hashlib.sha256()
    for split in ("train", "val"):
        paths = sorted((root / "leftImg8bit" / split).rglob("*.png")) + sorted((root / "gtFine" / split).rglob("*.png"))
        assert len(paths) == 2 * {"train": 3, "val": 2}[split]
        for path in paths:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(np.asarray(Image.open(path)).tobytes())
    assert digest.hexdigest() == PAINTER_PIXELS_SHA256
