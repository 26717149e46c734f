"""Class sets, data set layouts and the profile rule: the lookup tables against hand-written tables, each reader on
real files written by the demo painter, every refusal as one line (exit code 2 from the command line)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.dataset import make_demo_dataset
from training.data.classes import (
    CAMVID,
    CITYSCAPES,
    IGNORE_INDEX,
    UNDECLARED,
    ClassSet,
    read_classes_file,
)
from training.data.images import CLASS_NAMES, PALETTE, read_train_ids
from training.data.layouts import most_common_size, open_dataset, read_mask
from training.errors import UserError, run_cli
from training.profiles import PROFILES, resolve_profile, scale_profile

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 3, "num_val": 2, "seed": 4}
CAMVID_SIZE, FOLDER_SIZE = (160, 120), (192, 108)  # 4:3 and 16:9, small for speed


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The same scenes (seed, size) in every layout, plus the Cityscapes layout at the other layouts' sizes."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        "cityscapes": make_demo_dataset(root / "cs", **SMALL, size=(256, 128)),
        "cityscapes_43": make_demo_dataset(root / "cs43", **SMALL, size=CAMVID_SIZE, num_test=2),
        "cityscapes_169": make_demo_dataset(root / "cs169", **SMALL, size=FOLDER_SIZE),
        "camvid": make_demo_dataset(root / "camvid", **SMALL, size=CAMVID_SIZE, num_test=2, layout="camvid"),
        "folder": make_demo_dataset(root / "folder", **SMALL, size=FOLDER_SIZE, num_test=1, layout="folder"),
        "colours": make_demo_dataset(root / "col", **SMALL, size=FOLDER_SIZE, layout="folder", mask_colours=True),
    }


def copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def error_line(argv: list[str], capsys) -> str:
    """Run `python -m training.data.check` in-process: its exit code must be 2 and stderr one `error:` line."""
    from training.data.check import main

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# ------------------------------------------------------------------------------------------------ lookup tables
CITYSCAPES_TRAIN_IDS = {  # label id -> train id, from the Cityscapes definition (labels.py of cityscapesScripts)
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def test_cityscapes_class_set_is_todays_table():
    assert CITYSCAPES.names == tuple(CLASS_NAMES) and CITYSCAPES.num_classes == 19
    assert CITYSCAPES.palette == tuple(tuple(int(v) for v in PALETTE[i]) for i in range(19))
    assert CITYSCAPES.palette[0] == (128, 64, 128) and CITYSCAPES.names[10] == "sky"
    for value in range(256):
        if value in CITYSCAPES_TRAIN_IDS:
            expected = CITYSCAPES_TRAIN_IDS[value]
        elif value <= 33 or value == 255:
            expected = IGNORE_INDEX  # the void label ids, and 255 that some tools write for void
        else:
            expected = UNDECLARED
        assert CITYSCAPES.lookup[value] == expected, value
    assert (CITYSCAPES.palette_table()[:19] == PALETTE[:19]).all() and not CITYSCAPES.palette_table()[19:].any()


def test_camvid_class_set():
    names = "Sky Building Pole Road Pavement Tree SignSymbol Fence Car Pedestrian Bicyclist".split()
    assert CAMVID.names == tuple(names) and len(set(CAMVID.palette)) == 11
    assert CAMVID.palette[names.index("Road")] == (128, 64, 128) and CAMVID.palette[0] == (128, 128, 128)
    expected = [*range(11), 255] + [UNDECLARED] * 243 + [255]
    assert list(CAMVID.lookup) == expected
    assert CAMVID.table.dtype == np.uint8 and not CAMVID.table.flags.writeable


def test_folder_class_set_from_classes_json(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["a", "b", "c"], "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "void": 200}))
    classes = read_classes_file(path)
    assert classes.names == ("a", "b", "c") and classes.palette == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    table = [UNDECLARED] * 256
    table[0:3], table[200] = [0, 1, 2], 255
    assert list(classes.lookup) == table
    assert classes.void_colour == (0, 0, 0)  # black is no class colour: it is void in colour masks
    values = np.array([[0, 1, 2, 200]], dtype=np.uint8)
    assert classes.train_ids(values, "m.png").tolist() == [[0, 1, 2, 255]]
    rgb = np.array([[[7, 8, 9], [0, 0, 0], [1, 2, 3]]], dtype=np.uint8)
    assert classes.colour_train_ids(rgb, "m.png").tolist() == [[2, 255, 0]]


def test_black_as_a_class_colour_leaves_no_void_colour(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 255, 255]], "void": 255}))
    classes = read_classes_file(path)
    assert classes.void_colour is None
    assert classes.colour_train_ids(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8), "m").tolist() == [[0, 1]]


@pytest.mark.parametrize("classes", [CITYSCAPES, CAMVID], ids=["cityscapes", "camvid"])
def test_known_class_sets_round_trip_through_a_card(classes):
    assert ClassSet.from_dict(json.loads(json.dumps(classes.to_dict()))) is classes


def test_folder_class_set_round_trips_through_a_card(sets):
    classes = read_classes_file(sets["colours"] / "classes.json")
    again = ClassSet.from_dict(json.loads(json.dumps(classes.to_dict())))
    assert again == classes and again.lookup == classes.lookup and again.void_colour == (0, 0, 0)
    assert again.same_classes(classes) and not again.same_classes(CAMVID)
    with pytest.raises(UserError, match="card.json: classes: 5 classes recorded as camvid's; expected its own 11"):
        ClassSet.from_dict({**classes.to_dict(), "dataset": "camvid"}, source="card.json")


# ----------------------------------------------------------------------------------------------- classes.json
GOOD = {"classes": ["road", "car"], "palette": [[128, 64, 128], [0, 0, 142]], "void": 255}
BAD_CLASSES = {
    "no void": ({k: v for k, v in GOOD.items() if k != "void"}, "no 'void' entry"),
    "duplicate colours": ({**GOOD, "palette": [[1, 2, 3], [1, 2, 3]]}, r"palette: \[1, 2, 3\] appears twice"),
    "duplicate names": ({**GOOD, "classes": ["road", "Road"]}, "classes: 'Road' appears twice"),
    "short palette": ({**GOOD, "palette": [[1, 2, 3]]}, r"palette: expected one \[r, g, b\] per class \(2\), got 1"),
    "void is a class": ({**GOOD, "void": 1}, "void: expected a mask value that is not a class index"),
    "void out of range": ({**GOOD, "void": 256}, "void: expected the mask value of void pixels"),
    "bad colour": ({**GOOD, "palette": [[1, 2, 3], [1, 2, 300]]}, "palette entry 1: expected"),
    "unknown key": ({**GOOD, "void_color": [0, 0, 0]}, "unknown key 'void_color'"),
    "void colour of a class": ({**GOOD, "void_colour": [0, 0, 142]}, "void_colour: .* is the colour of class 'car'"),
    "no classes": ({**GOOD, "classes": [], "palette": []}, "classes: expected 1 to 254 class names, got 0"),
    "not an object": ([1, 2], "expected a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSES))
def test_bad_classes_file_is_one_line_naming_the_file(tmp_path, case):
    data, message = BAD_CLASSES[case]
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as error:
        read_classes_file(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_classes_file_missing_or_not_json(tmp_path):
    with pytest.raises(UserError, match="classes.json: missing; expected the folder data set's class file"):
        read_classes_file(tmp_path / "classes.json")
    (tmp_path / "classes.json").write_text('{"classes": ["a"],')
    with pytest.raises(UserError, match="classes.json: not valid JSON"):
        read_classes_file(tmp_path / "classes.json")


# --------------------------------------------------------------------------------------------------- readers
def test_cityscapes_reader_agrees_with_the_training_reader(sets):
    layout = open_dataset("cityscapes", sets["cityscapes"])
    assert layout.classes is CITYSCAPES
    pairs = layout.pairs("train")
    assert len(pairs) == 3 and len(layout.pairs("val")) == 2
    for image, mask in pairs:
        assert image.name.endswith("_leftImg8bit.png") and image.parent.name == mask.parent.name
        assert mask.name == image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        assert (layout.read_mask(mask) == read_train_ids(str(mask)).numpy()).all()
    assert [p.mask for p in open_dataset("cityscapes", sets["cityscapes_43"]).pairs("test", labelled=False)] == [
        None
    ] * 2


def test_camvid_reader_gives_the_scenes_of_the_cityscapes_layout(sets):
    """Same seed and size: the same scenes; CamVid's train ids are the hand mapping of the Cityscapes label ids."""
    by_name = {"road": 3, "sidewalk": 4, "building": 1, "wall": 1, "fence": 7, "pole": 2, "traffic light": 2,
               "traffic sign": 6, "vegetation": 5, "terrain": 5, "sky": 0, "person": 9, "rider": 10, "car": 8,
               "truck": 8, "bus": 8, "bicycle": 10}  # fmt: skip
    cityscapes_ids = {n: i for n, i in zip(CLASS_NAMES, range(19))}
    from_train_id = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for name, camvid in by_name.items():
        from_train_id[cityscapes_ids[name]] = camvid
    camvid = open_dataset("camvid", sets["camvid"])
    cityscapes = open_dataset("cityscapes", sets["cityscapes_43"])
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        ours, theirs = camvid.pairs(split), cityscapes.pairs(split, labelled=split != "test")
        assert len(ours) == count and [p.image.parent.name for p in ours] == [split] * count
        assert all(p.mask.parent.name == f"{split}annot" and p.mask.name == p.image.name for p in ours)
        if split == "test":
            continue
        for (image, mask), (their_image, their_mask) in zip(ours, theirs):
            assert (np.asarray(Image.open(image)) == np.asarray(Image.open(their_image))).all()
            expected = from_train_id[read_train_ids(str(their_mask)).numpy()]
            assert (camvid.read_mask(mask) == expected).all()
            assert set(np.unique(np.asarray(Image.open(mask)))) <= set(range(12))


def test_folder_reader_index_and_colour_masks_agree(sets):
    folder, colours = open_dataset("folder", sets["folder"]), open_dataset("folder", sets["colours"])
    assert folder.classes.names == ("road", "building", "vegetation", "vehicle", "person")
    cityscapes = open_dataset("cityscapes", sets["cityscapes_169"])
    to_folder = {"road": 0, "building": 1, "wall": 1, "vegetation": 2, "terrain": 2, "car": 3, "truck": 3, "bus": 3,
                 "bicycle": 3, "person": 4, "rider": 4}  # fmt: skip
    from_train_id = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for name, index in to_folder.items():
        from_train_id[CLASS_NAMES.index(name)] = index
    for split in ("train", "val"):
        for a, b, c in zip(folder.pairs(split), colours.pairs(split), cityscapes.pairs(split)):
            assert (
                a.image.suffix == ".jpg"
                and a.mask == a.image.parent.parent.parent / "masks" / split / f"{a.image.stem}.png"
            )
            assert Image.open(a.mask).mode == "L" and Image.open(b.mask).mode == "RGB"
            ids = folder.read_mask(a.mask)
            assert (ids == colours.read_mask(b.mask)).all()
            assert (ids == from_train_id[read_train_ids(str(c.mask)).numpy()]).all()
            jpeg, png = (np.asarray(Image.open(p)).astype(int) for p in (a.image, c.image))
            assert np.abs(jpeg - png).mean() < 8 < np.abs(jpeg - png[::-1]).mean()  # the same scene, as a JPEG
    assert [p.mask for p in folder.pairs("test", labelled=False)] == [None]


def test_undeclared_mask_value_names_the_file_and_the_value(sets, tmp_path, capsys):
    root = copy(sets["folder"], tmp_path)
    mask = root / "masks" / "train" / "train_0001.png"
    values = np.asarray(Image.open(mask)).copy()
    values[5, 7], values[9, 9] = 7, 9
    Image.fromarray(values).save(mask)
    expected = f"{mask}: value 7 is not a class index of classes.json (0-4) nor its void 255 (nor are 9)"
    with pytest.raises(UserError) as error:
        open_dataset("folder", root).read_mask(mask)
    assert str(error.value) == expected
    assert error_line(["--dataset", "folder", "--data-dir", str(root)], capsys) == f"error: {expected}"


def test_undeclared_colour_and_value_in_camvid(sets, tmp_path):
    root = copy(sets["colours"], tmp_path)
    mask = root / "masks" / "val" / "val_0000.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    with pytest.raises(UserError, match=r"val_0000.png: colour \(1, 2, 3\) is not a colour of the folder palette"):
        open_dataset("folder", root).read_mask(mask)
    annot = copy(sets["camvid"], tmp_path) / "valannot" / "0016E5_000000.png"
    values = np.asarray(Image.open(annot)).copy()
    values[3, 3] = 12
    Image.fromarray(values).save(annot)
    with pytest.raises(
        UserError, match=r"0016E5_000000.png: value 12 is not a CamVid class index \(0-10\) nor its void"
    ):
        read_mask(annot, CAMVID)


def test_mask_modes(tmp_path):
    values = np.array([[0, 1], [11, 255]], dtype=np.uint8)
    palette_image = Image.fromarray(values, mode="L").convert("P")  # a palette PNG: its indices are the values
    palette_image.putpalette([v for i in range(256) for v in (255 - i, i, 0)])
    palette_image.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png", CAMVID).tolist() == [[0, 1], [255, 255]]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0, :3], rgba[..., 3] = CAMVID.palette[3], 17  # alpha is ignored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert read_mask(tmp_path / "rgba.png", CAMVID).tolist() == [[3, 255]]
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(UserError, match="deep.png: a mask of PNG mode 'I;16'; expected 8-bit class indices"):
        read_mask(tmp_path / "deep.png", CAMVID)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(
        UserError, match="rgb.png: a colour \\(RGB\\) mask; expected a single-channel 8-bit PNG of cityscapes ids"
    ):
        read_mask(tmp_path / "rgb.png", CITYSCAPES)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="broken.png: cannot read the mask"):
        read_mask(tmp_path / "broken.png", CAMVID)


# --------------------------------------------------------------------------------------------- layout refusals
def _remove(root: Path, relative: str) -> None:
    path = root / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()


LAYOUT_REFUSALS = [
    ("camvid", lambda r: _remove(r, "valannot"), "--data-dir {root}: missing valannot/ (expected the CamVid SegNet"),
    ("camvid", lambda r: _remove(r, "trainannot/0001TP_000002.png"), "{root}/train/0001TP_000002.png: no mask"),
    ("camvid", lambda r: _remove(r, "train/0001TP_000001.png"), "{root}/trainannot/0001TP_000001.png: a mask without"),
    ("camvid", lambda r: (r / "train" / "notes.txt").write_text("x"), "{root}/train/notes.txt: not an image file"),
    (
        "camvid",
        lambda r: Image.new("L", (120, 160)).save(r / "valannot" / "0016E5_000001.png"),
        "{root}/valannot/0016E5_000001.png: 120x160 pixels, its image 0016E5_000001.png 160x120; expected the same",
    ),
    ("folder", lambda r: _remove(r, "classes.json"), "{root}/classes.json: missing; expected the folder data set's"),
    ("folder", lambda r: _remove(r, "images/train"), "--data-dir {root}: missing images/train/ (expected the folder"),
    ("folder", lambda r: _remove(r, "masks/val/val_0001.png"), "{root}/images/val/val_0001.jpg: no mask"),
    (
        "folder",
        lambda r: shutil.copy(r / "images/train/train_0000.jpg", r / "images/train/train_0000.png"),
        "{root}/images/train/train_0000.png: a second image with stem 'train_0000'",
    ),
    (
        "folder",
        lambda r: [_remove(r, f"images/val/val_000{i}.jpg") for i in (0, 1)],
        "--data-dir {root}: images/val/ holds no images",
    ),
    (
        "folder",
        lambda r: (r / "classes.json").write_text(json.dumps({k: v for k, v in GOOD.items() if k != "void"})),
        "{root}/classes.json: no 'void' entry",
    ),
    (
        "cityscapes",
        lambda r: _remove(r, "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"),
        "{root}/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png: no label file",
    ),
    ("cityscapes", lambda r: _remove(r, "leftImg8bit"), "--data-dir {root}: missing leftImg8bit/train/"),
]


@pytest.mark.parametrize("dataset, damage, message", LAYOUT_REFUSALS)
def test_layout_refusals_are_one_line_and_exit_2(sets, tmp_path, capsys, dataset, damage, message):
    root = copy(sets[dataset], tmp_path)
    damage(root)
    line = error_line(["--dataset", dataset, "--data-dir", str(root)], capsys)
    assert line.startswith("error: " + message.format(root=root)), line


def test_missing_data_dir_and_unknown_dataset(tmp_path, capsys):
    line = error_line(["--dataset", "camvid", "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert (
        line
        == f"error: --data-dir {tmp_path / 'nowhere'}: no such directory (expected the CamVid SegNet layout "
        + ("train/ trainannot/ val/ valannot/ test/ testannot/, same file names)")
    )
    with pytest.raises(UserError, match="--dataset voc: unknown data set; expected one of cityscapes, camvid, folder"):
        open_dataset("voc", tmp_path)


def test_check_command_as_the_user_runs_it(sets):
    """The checker on a good set prints its classes and profiles; on a bad one, one `error:` line and exit 2."""
    run = [sys.executable, "-m", "training.data.check", "--dataset", "camvid", "--data-dir"]
    good = subprocess.run([*run, str(sets["camvid"])], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "camvid: 11 classes (Sky, Building" in good.stdout and "train: 3 images with masks" in good.stdout
    assert "profile 5 'highest': image 160x120, patch 128x96" in good.stdout
    bad = subprocess.run([*run, str(sets["folder"])], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout.startswith("camvid: 11 classes")
    assert bad.stderr == f"error: --data-dir {sets['folder']}: missing train/ (expected the CamVid SegNet layout " + (
        "train/ trainannot/ val/ valannot/ test/ testannot/, same file names)\n"
    )


# ------------------------------------------------------------------------------------------------- profile rule
def test_cityscapes_size_maps_to_exactly_the_table():
    for name, (image, patch) in PROFILES.items():
        scaled = scale_profile(resolve_profile(name), (2048, 1024))
        assert (scaled.image_size, scaled.patch_size) == (image, patch)


def test_camvid_profiles_by_hand():
    """480x360: each axis x (profile image / 2048x1024), whole pixels; patch x (patch / image), a multiple of 32."""
    expected = {  # low: 480*576/2048 = 135, 360*288/1024 = 101.25; patch 135*448/576 = 105 -> 96, 78.75 -> 64
        "low": ((135, 101), (96, 64)),
        "medium": ((180, 135), (128, 96)),  # patch 135, 101.25
        "high": ((240, 180), (192, 128)),  # patch 180, 135
        "higher": ((360, 270), (256, 192)),  # patch 270, 202.5
        "highest": ((480, 360), (352, 256)),  # patch 360, 270
    }
    for name, sizes in expected.items():
        profile = scale_profile(resolve_profile(name), (480, 360))
        assert (profile.image_size, profile.patch_size) == sizes, name
        assert profile.name == name and profile.number == resolve_profile(name).number


@pytest.mark.parametrize("native", [(480, 360), (640, 360), (1920, 1080), (960, 720), (1000, 1000), (300, 700)])
def test_profiles_keep_the_aspect_ratio_and_patches_fit(native):
    for name in PROFILES:
        profile = scale_profile(resolve_profile(name), native)
        (w, h), (pw, ph) = profile.image_size, profile.patch_size
        assert abs(w / h - native[0] / native[1]) <= native[0] / native[1] * (1 / w + 1 / h)  # within a pixel
        assert pw % 32 == 0 and ph % 32 == 0 and 32 <= pw <= w and 32 <= ph <= h, (name, profile)
    half = scale_profile(resolve_profile("highest"), (1024, 512))  # half Cityscapes' size: the top profile is 'high'
    assert (half.image_size, half.patch_size) == PROFILES["high"]


def test_native_size_is_the_most_common(sets, tmp_path):
    images = [p.image for p in open_dataset("camvid", sets["camvid"]).pairs("train")]
    odd = tmp_path / "odd.png"
    Image.new("RGB", (64, 48)).save(odd)
    assert most_common_size([odd, *images]) == CAMVID_SIZE
    assert open_dataset("camvid", sets["camvid"]).native_size() == CAMVID_SIZE
    assert open_dataset("cityscapes", sets["cityscapes"]).native_size() == (2048, 1024)  # the table as written
