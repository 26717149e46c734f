"""The demo painter in CamVid's SegNet layout and in the folder layout: file layout, the class mapping by hand,
the same scenes as the Cityscapes layout, determinism, refusals, and the painter's independence of torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.dataset import MANIFEST_NAME, DemoDataError, run
from demo.dataset import make_demo_dataset as make
from demo.layouts import CAMVID_CLASSES, FOLDER_CLASSES

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 3, "num_val": 2, "seed": 2}

# Cityscapes label id -> CamVid index, written out by hand from the two data sets' definitions (11 = void)
CAMVID_BY_HAND = {7: 3, 8: 4, 11: 1, 12: 1, 13: 7, 17: 2, 19: 2, 20: 6, 21: 5, 22: 5, 23: 0, 24: 9, 25: 10, 26: 8,
                  27: 8, 28: 8, 33: 10}  # fmt: skip
# ... and -> the folder set's 5 classes (road, building, vegetation, vehicle, person; 255 = void)
FOLDER_BY_HAND = {7: 0, 11: 1, 12: 1, 21: 2, 22: 2, 26: 3, 27: 3, 28: 3, 33: 3, 24: 4, 25: 4}


def by_hand(label_ids: np.ndarray, mapping: dict[int, int], void: int) -> np.ndarray:
    expected = np.full(label_ids.shape, void, dtype=np.uint8)
    for label_id, index in mapping.items():
        expected[label_ids == label_id] = index
    return expected


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("cs"), **SMALL, size=(160, 120), num_test=1)


def cityscapes_pair(root: Path, split: str, index: int) -> tuple[Path, Path]:
    images = sorted((root / "leftImg8bit" / split).glob("*/*.png"), key=lambda p: (p.name.split("_")[1], p.name))
    image = images[index]  # cities take turns: index i is sequence i // cities in city i % cities
    return image, root / "gtFine" / split / image.parent.name / image.name.replace("leftImg8bit", "gtFine_labelIds")


def test_camvid_layout(cityscapes, tmp_path):
    root = make(tmp_path / "camvid", **SMALL, size=(160, 120), num_test=1, layout="camvid")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        MANIFEST_NAME, "test", "testannot", "train", "trainannot", "val", "valannot"
    ]  # fmt: skip
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        images, annots = sorted((root / split).iterdir()), sorted((root / f"{split}annot").iterdir())
        assert [p.name for p in images] == [p.name for p in annots] and len(images) == count
        for index, (image, annot) in enumerate(zip(images, annots)):
            with Image.open(image) as im, Image.open(annot) as an:
                assert (im.mode, im.size, an.mode, an.size) == ("RGB", (160, 120), "L", (160, 120))
            if split == "test":
                continue
            their_image, their_label = cityscapes_pair(cityscapes, split, index)
            assert (pixels(image) == pixels(their_image)).all()  # the same scene
            assert (pixels(annot) == by_hand(pixels(their_label), CAMVID_BY_HAND, 11)).all()
    values = set().union(*(np.unique(pixels(p)).tolist() for p in (root / "trainannot").iterdir()))
    assert values <= set(range(12)) and len(values) >= 8 and 11 in values
    assert json.loads((root / MANIFEST_NAME).read_text())["params"]["layout"] == "camvid"


@pytest.mark.parametrize("mask_colours", [False, True], ids=["indices", "colours"])
def test_folder_layout(cityscapes, tmp_path, mask_colours):
    root = make(tmp_path / "folder", **SMALL, size=(160, 120), num_test=1, layout="folder", mask_colours=mask_colours)
    classes = json.loads((root / "classes.json").read_text())
    assert classes["classes"] == ["road", "building", "vegetation", "vehicle", "person"] and classes["void"] == 255
    assert classes["palette"] == [list(colour) for _, colour in FOLDER_CLASSES]
    assert ("void_colour" in classes) == mask_colours
    assert not (root / "masks" / "test").exists() and len(list((root / "images" / "test").iterdir())) == 1
    for split, count in (("train", 3), ("val", 2)):
        images, masks = sorted((root / "images" / split).iterdir()), sorted((root / "masks" / split).iterdir())
        assert [p.stem for p in images] == [p.stem for p in masks] and len(images) == count
        assert {p.suffix for p in images} == {".jpg"} and {p.suffix for p in masks} == {".png"}
        for index, mask in enumerate(masks):
            expected = by_hand(pixels(cityscapes_pair(cityscapes, split, index)[1]), FOLDER_BY_HAND, 255)
            if mask_colours:
                colours = np.array([c for _, c in FOLDER_CLASSES] + [[0, 0, 0]] * 251, dtype=np.uint8)
                expected = colours[expected]
            assert (pixels(mask) == expected).all()


def test_demo_class_names_agree_with_the_training_class_sets(tmp_path):
    """This package may not import training: its copies of the class names and colours must agree with it."""
    from training.data.classes import CAMVID, read_classes_file

    assert CAMVID_CLASSES == CAMVID.names
    root = make(tmp_path / "folder", num_train=1, num_val=1, size=(64, 32), layout="folder", mask_colours=True)
    classes = read_classes_file(root / "classes.json")
    assert classes.names == tuple(n for n, _ in FOLDER_CLASSES) and classes.void_colour == (0, 0, 0)


def test_same_parameters_give_the_same_files_and_reuse(tmp_path, capsys):
    first = make(tmp_path / "a", **SMALL, size=(96, 64), layout="camvid")
    again = make(tmp_path / "b", **SMALL, size=(96, 64), layout="camvid")
    assert files(first) == files(again)
    run(["--root", str(first), "--layout", "camvid", "--train", "3", "--val", "2", "--seed", "2", "--size", "96x64"])
    assert "nothing written" in capsys.readouterr().out
    make(first, **{**SMALL, "num_train": 1}, size=(96, 64), layout="camvid")  # other parameters: replaced
    assert len(list((first / "train").iterdir())) == 1 and len(list((first / "trainannot").iterdir())) == 1


def test_default_sizes_per_layout(tmp_path, capsys):
    run(["--root", str(tmp_path / "c"), "--layout", "camvid", "--train", "1", "--val", "0"])
    assert "(480x360, seed 0, camvid layout)" in capsys.readouterr().out
    with Image.open(next((tmp_path / "c" / "train").iterdir())) as image:
        assert image.size == (480, 360)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layout", "camvid", "--mask-colours"], "error: mask_colours: only the folder layout has colour masks"),
        (["--layout", "folder", "--size", "10x10"], "error: size: expected at least 64x32"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run(["--root", str(tmp_path / "x"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_refuses_another_layouts_demo_set_and_foreign_data(tmp_path):
    root = make(tmp_path / "set", num_train=1, num_val=1, size=(64, 32))
    with pytest.raises(DemoDataError, match="holds a demo set in the cityscapes layout; expected an empty folder"):
        make(root, num_train=1, num_val=1, size=(64, 32), layout="camvid")
    assert (root / "leftImg8bit").is_dir() and not (root / "train").exists()
    foreign = tmp_path / "mine" / "images" / "photo.jpg"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"a user's photo")
    with pytest.raises(DemoDataError, match="holds images that the demo generator did not write"):
        make(tmp_path / "mine", num_train=1, num_val=1, layout="folder")
    assert foreign.read_bytes() == b"a user's photo"


def test_painter_needs_neither_torch_nor_training():
    code = (
        "import sys, demo.dataset, demo.layouts; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training')); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
