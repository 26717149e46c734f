"""Stages on other data sets than Cityscapes (issue 24): a CamVid-layout demo set and a folder set with 5 classes
from its classes.json train a stage with their own classes (head, per-class table, history, card, state); the
efficiency tool scores CamVid models with their 11 classes on their own data set, with the stage's figure, and
predict.py's PNGs scored by hand (numpy, Pillow) against the annotation files give the tool's mIoU and per-class
IoU; models, teachers, resumes and data sets of another class set are refused in one line (exit 2), as are bad
masks and classes files, with nothing written.

The stages run in this process (the real scripts' `main`, with their own profile table: `--profile highest` is the
demo sets' native size); the tools run as a user runs them.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main, run_script
from PIL import Image

import fast_scnn
import train
import train_distillation
from demo.dataset import make_demo_dataset
from training.data.classes import CAMVID
from training.data.photometric import MEAN, STD
from training.engine.history import history_path, read_history
from training.errors import run_cli
from training.models.card import profile_entry, read_card, write_card
from training.profiles import Profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SIZE = (160, 120)  # CamVid's 4:3 (its 480x360 / 3)
FOLDER_SIZE = (192, 108)  # 16:9
FIVE = ["road", "building", "vegetation", "vehicle", "person"]


def run_stage(module, argv: list[str]) -> tuple[int, str, str]:
    """A training script's main as its command line runs it, in this process: (exit code, stdout, stderr)."""
    return run_main(module.main, argv)


def stage_args(dataset: str, data_dir: Path, experiment: str, epochs: int = 2, *extra: str) -> list[str]:
    return [
        *("--dataset", dataset, "--data-dir", str(data_dir), "--profile", "highest", "--epochs", str(epochs)),
        *("--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--experiment-id", experiment, *extra),
    ]


def one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def iou_table(stdout: str) -> dict[str, float]:
    """The last per-class IoU table of a log: {class name: IoU in %, nan for n/a}, in its order."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("class ") and line.endswith("IoU (%)"))
    table = {}
    for line in lines[start + 1 :]:
        name, _, value = line.rpartition(" ")
        if not name or not (value == "n/a" or value.replace(".", "").isdigit()):
            break
        table[name.strip()] = math.nan if value == "n/a" else float(value)
    return table


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A CamVid-layout and a folder-layout demo set, and a stage trained on each (models/ etc. under the folder)."""
    root = tmp_path_factory.mktemp("datasets")
    data = {
        "camvid": make_demo_dataset(root / "camvid", num_train=4, num_val=4, size=SIZE, seed=3, layout="camvid"),
        "folder": make_demo_dataset(root / "folder", num_train=4, num_val=2, size=FOLDER_SIZE, seed=3, layout="folder"),
    }
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name in data:
            runs[name] = run_stage(train, stage_args(name, data[name], f"{name}-01"))
    return root, data, runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["camvid", "folder"])
def test_a_stage_trains_with_the_data_sets_own_classes(work, name):
    root, data, runs = work
    code, out, err = runs[name]
    assert code == 0, out + err
    names = list(CAMVID.names) if name == "camvid" else FIVE
    width, height = SIZE if name == "camvid" else FOLDER_SIZE
    assert list(iou_table(out)) == names  # the per-class table names the data set's classes
    assert f"image {width}x{height}, patch" in out  # profile 5 is the native size: nothing distorted
    card = read_card(root / "models" / f"{name}-01.pth")
    assert card["classes"]["classes"] == names and card["classes"]["dataset"] == name
    if name == "folder":  # the classes file the user wrote, as the card records it
        written = json.loads((data[name] / "classes.json").read_text())
        assert card["classes"]["palette"] == written["palette"] and card["classes"]["void"] == written["void"]
    assert card["native_size"] == f"{width}x{height}" and card["profile"]["image_size"] == f"{width}x{height}"
    assert card["args"]["dataset"] == name
    weights = torch.load(root / "models" / f"{name}-01.pth", weights_only=True)
    assert weights["classifier.conv.weight"].shape[0] == len(names)  # the head
    state = torch.load(root / "checkpoints" / f"{name}-01" / "state.pth", weights_only=True)
    assert state["classes"] == card["classes"] and tuple(state["best_confusion_matrix"].shape) == (len(names),) * 2
    rows = read_history(history_path(root / "checkpoints" / f"{name}-01"))
    columns = [c.split("/", 1)[1] for c in rows[0] if c.startswith("valid_iou/")]
    assert len(rows) == 2 and columns and set(columns) <= set(names)  # each class present in val has a column
    (preview,) = (root / "checkpoints" / f"{name}-01").glob("preview-epoch-*.png")
    grid = np.asarray(Image.open(preview).convert("RGB"))
    truth = grid[:, width : 2 * width].reshape(-1, 3)  # image | ground truth | prediction
    colours = {tuple(c) for c in np.unique(truth, axis=0)}
    palette = {tuple(c) for c in card["classes"]["palette"]} | {(0, 0, 0)}
    assert colours <= palette and len(colours) >= 3  # in the data set's own colours, void black


def calibrated_camvid_model(data: Path, path: Path) -> None:
    """A CamVid model (random weights, BatchNorm statistics of the demo images: its predictions vary over an image,
    unlike a briefly trained one's) with the card a stage would write for it."""
    torch.manual_seed(0)
    model = fast_scnn.Model(n_classes=11)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "train").glob("*.png"))]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        model.train()((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    torch.save(model.eval().state_dict(), path)
    profile = Profile("highest", 5, SIZE, (128, 96))
    card = {"arch": "fast_scnn", "profile": profile_entry(profile), "native_size": "160x120"}
    write_card(path, card | {"classes": CAMVID.to_dict()})


def confusion_by_hand(predictions: Path, masks: Path, classes: int) -> np.ndarray:
    """Rows ground truth, columns prediction, from predict.py's PNGs and CamVid's annotation PNGs (11 = void), with
    numpy and Pillow only."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for mask_path in sorted(masks.glob("*.png")):
        truth = np.asarray(Image.open(mask_path)).astype(np.int64)
        predicted = np.asarray(Image.open(predictions / mask_path.name)).astype(np.int64)
        assert predicted.shape == truth.shape and predicted.max() < classes
        keep = truth != 11
        np.add.at(matrix, (truth[keep], predicted[keep]), 1)
    return matrix


@pytest.mark.slow
def test_camvid_models_are_scored_with_their_11_classes_and_agree_with_a_computation_by_hand(work, tmp_path):
    root, data, _ = work
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(root / "models" / "camvid-01.pth", models / "a-trained.pth")
    shutil.copy(root / "models" / "camvid-01.json", models / "a-trained.json")
    calibrated_camvid_model(data["camvid"], models / "b-calibrated.pth")
    sheet = tmp_path / "efficiency.csv"
    quick = ("--latency-runs", "1", "--min-seconds", "0", "--warmup", "0", "--agreement-images", "1")
    result = run_script(
        "evaluate_efficiency.py",
        *("--all", str(models), "--data-dir", str(data["camvid"]), "--num-workers", "0", "--threads", "1"),
        *(*quick, "--output-csv", str(sheet), "--batch-size", "1"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("camvid: 11 classes") == 2
    trained, calibrated = list(csv.DictReader(open(sheet, newline="")))
    for row in (trained, calibrated):
        assert (row["dataset"], row["classes"], row["resolution"], row["tta"]) == ("camvid", "11", "120x160", "none")
    # the tool scores as the stage does: the trained model's sheet figure is its card's best validation mIoU
    assert float(trained["miou"]) == pytest.approx(read_card(models / "a-trained.pth")["best"]["miou"], abs=1e-6)
    printed = iou_table(result.stdout)  # the calibrated model's table (printed last)
    assert list(printed) == list(CAMVID.names)

    out = tmp_path / "predictions"
    result = run_script(
        "predict.py",
        *("--model-path", str(models / "b-calibrated.pth"), "--input", str(data["camvid"] / "val")),
        *("--output", str(out), "--no-overlay", "--batch-size", "1", "--threads", "1"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 images in" in result.stdout and "frames/s" in result.stdout
    matrix = confusion_by_hand(out, data["camvid"] / "valannot", 11)
    tp, truth, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    union = truth + predicted - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    assert (np.count_nonzero(predicted) >= 3) and np.nanmax(iou) > 0  # predictions that vary: a sensitive check
    assert float(calibrated["miou"]) == pytest.approx(np.nanmean(iou), abs=1e-6)
    assert float(calibrated["pixel_accuracy"]) == pytest.approx(tp.sum() / matrix.sum(), abs=1e-6)
    for name, value in zip(CAMVID.names, iou):
        assert (math.isnan(printed[name]) and math.isnan(value)) or printed[name] == pytest.approx(
            100 * value, abs=6e-3
        )


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.slow
def test_models_and_teachers_of_another_class_set_are_refused_and_the_same_classes_train(work, monkeypatch):
    root, data, _ = work
    monkeypatch.chdir(root)
    shutil.copy(root / "models" / "camvid-01.pth", root / "models" / "nocard.pth")  # a model from elsewhere
    folder = lambda experiment, *extra: stage_args("folder", data["folder"], experiment, 1, *extra)  # noqa: E731
    camvid = "a model of camvid: 11 classes (Sky, Building"  # its card's classes
    folder_set = "this stage trains on folder: 5 classes (road, building"
    counted = "trained for 11 classes, expected 5"  # no card: the weights' head
    cases = [
        (train, folder("x-1", "--previous-model-path", "models/camvid-01.pth"), ["--previous-model-path", camvid]),
        (train_distillation, folder("x-2", "--trained-teacher-model-path", "models/camvid-01.pth"), [camvid]),
        (train_distillation, folder("x-3", "--trained-teacher-model-path", "models/nocard.pth"), [counted, folder_set]),
        (train, folder("x-4", "--previous-model-path", "models/nocard.pth"), ["models/nocard.pth", counted]),
    ]
    for module, argv, expected in cases:
        line = one_error_line(*run_stage(module, argv)[::2])
        assert all(text in line for text in expected), line
        assert folder_set in line or module is train and "nocard" in line, line
    assert not list((root / "models").glob("x-*")) and not (root / "checkpoints" / "x-1").exists()
    # a teacher and a starting model of the folder set's own classes (the teacher built for its 5 classes)
    argv = folder("folder-02", "--trained-teacher-model-path", "models/folder-01.pth")
    code, out, err = run_stage(train_distillation, [*argv, "--previous-student-model-path", "models/folder-01.pth"])
    assert code == 0, out + err
    assert list(iou_table(out)) == FIVE


@pytest.mark.slow
def test_a_model_is_not_scored_on_a_data_set_of_other_classes(work, tmp_path):
    root, data, _ = work
    for extra in (["--data-dir", str(data["folder"])], ["--dataset", "folder", "--data-dir", str(data["folder"])]):
        result = run_script(
            "evaluate_efficiency.py", "--model-path", str(root / "models" / "camvid-01.pth"), *extra, cwd=tmp_path
        )
        line = one_error_line(result.returncode, result.stderr)
        assert "camvid-01.pth" in line or "missing val/" in line, line
    assert "holds folder: 5 classes" in line and "expected the data set the model was trained on" in line
    assert not (tmp_path / "measurements").exists()


@pytest.mark.slow
def test_a_resume_on_changed_classes_is_refused(work, tmp_path, monkeypatch):
    root, data, _ = work
    monkeypatch.chdir(tmp_path)
    folder = Path(shutil.copytree(data["folder"], tmp_path / "folder", ignore=shutil.ignore_patterns(".cache")))
    code, out, err = run_stage(train, stage_args("folder", folder, "r-01", 1))
    assert code == 0, out + err
    classes = json.loads((folder / "classes.json").read_text())
    classes["classes"][3] = "car"  # the user edits the classes file between two runs of the same stage
    (folder / "classes.json").write_text(json.dumps(classes))
    line = one_error_line(*run_stage(train, stage_args("folder", folder, "r-01", 2))[::2])
    assert "state.pth: saved for the classes of folder" in line and "--restart" in line, line


@pytest.fixture
def small_folder(tmp_path) -> Path:
    return make_demo_dataset(tmp_path / "set", num_train=2, num_val=2, size=(64, 36), seed=1, layout="folder")


def edit_classes(folder: Path, change) -> None:
    classes = json.loads((folder / "classes.json").read_text())
    change(classes)
    (folder / "classes.json").write_text(json.dumps(classes))


@pytest.mark.parametrize(
    "bad,message",
    [
        ("mask value", "masks/train/train_0001.png: value 7 is not a class index of classes.json (0-4) nor its void"),
        ("no void", "classes.json: no 'void' entry"),
        ("duplicate colours", "classes.json: palette: [128, 64, 128] appears twice (entries 0 and 2)"),
    ],
)
def test_bad_masks_and_classes_files_are_refused_in_one_line_with_nothing_written(
    small_folder, tmp_path, monkeypatch, bad, message
):
    monkeypatch.chdir(tmp_path)
    if bad == "mask value":
        mask = small_folder / "masks" / "train" / "train_0001.png"
        pixels = np.array(Image.open(mask))
        pixels[5, 5] = 7
        Image.fromarray(pixels).save(mask)
    elif bad == "no void":
        edit_classes(small_folder, lambda c: c.pop("void"))
    else:
        edit_classes(small_folder, lambda c: c["palette"].__setitem__(2, list(c["palette"][0])))
    line = one_error_line(*run_stage(train, stage_args("folder", small_folder, "bad-01", 1))[::2])
    assert message in line, line
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()
    if bad == "mask value":  # what the checker says before a job is submitted
        with pytest.raises(SystemExit) as done:
            from training.data.check import main

            run_cli(main, ["--dataset", "folder", "--data-dir", str(small_folder)])
        assert done.value.code == 2
