"""training/evaluation/ (scoring, tta, export): full-resolution scoring, TTA, the label-id export, the label cache.

The slow tests train a small model on demo images larger than the profile and check, end to end, that the stage's
best mIoU, evaluate_efficiency.py's `miou` and the official Cityscapes evaluator (cityscapesscripts) run on the
exported PNGs are one number, per class too.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import run_main, run_script
from PIL import Image
from torch import nn

from demo.dataset import TEST_CITIES, make_demo_dataset
from training.data.dataset import CityscapesSegmentation, read_train_ids, to_model_input, val_transform
from training.evaluation import export, scoring, tta
from training.metrics import ConfusionMatrix
from training.profiles import resolve_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CLASSES = torchvision.datasets.Cityscapes.classes
TRAIN_LABEL_IDS = {c.id for c in CLASSES if 0 <= c.train_id < 255}


# ------------------------------------------------------------------------------------------------------ scoring


def test_upsampled_scores_are_bilinear_by_hand():
    # one row, two source pixels -> four: align_corners=False samples the source at x = (i + 0.5) / 2 - 0.5,
    # i.e. -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last pixel)
    logits = torch.tensor([[[0.0, 4.0]], [[2.0, 2.0]]])  # 2 classes x 1 x 2
    up = scoring.upsample(logits, (1, 4))
    assert torch.allclose(up[0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))
    assert torch.allclose(up[1, 0], torch.tensor([2.0, 2.0, 2.0, 2.0]))
    assert up.argmax(0).tolist() == [[1, 1, 0, 0]]  # class 1 wins where class 0 is below 2
    assert scoring.upsample(logits, (1, 2)) is not None and torch.equal(scoring.upsample(logits, (1, 2)), logits)


def test_scorer_counts_at_the_labels_own_size_and_keeps_differing_sizes():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 8, 16)
    labels = [torch.randint(0, 19, (32, 64), dtype=torch.uint8), torch.randint(0, 19, (24, 40), dtype=torch.uint8)]
    labels[0][:4] = 255  # void rows are skipped
    scorer = scoring.Scorer(19, loss=True)
    kept = {}
    scorer.update([logits], labels, keep=lambda i, p: kept.setdefault(i, p))
    expected = ConfusionMatrix(19)
    ce_sum, valid = 0.0, 0
    for i, label in enumerate(labels):  # an independent computation: F.interpolate on the batch item
        up = F.interpolate(logits[i : i + 1], size=label.shape, mode="bilinear", align_corners=False)
        expected.update(up.argmax(1)[0], label)
        ce_sum += F.cross_entropy(up, label[None].long(), ignore_index=255, reduction="sum").item()
        valid += int((label != 255).sum())
        assert kept[i].shape == label.shape
    assert torch.equal(scorer.matrix.matrix, expected.matrix)
    metrics = scorer.compute()
    assert metrics["miou"] == expected.compute()["miou"]
    assert metrics["valid_loss"] == pytest.approx(ce_sum / valid, rel=1e-5)


def test_a_perfect_profile_size_prediction_is_not_perfect_at_full_resolution():
    """The reason for the protocol: thin structures are lost by scoring at a smaller size."""
    label = torch.zeros(64, 128, dtype=torch.uint8)
    label[:, 61:63] = 5  # a 2-pixel pole
    label[40:, :] = 0
    small = scoring.nearest(label, (16, 32))  # the old score: labels nearest-resized to the profile size
    logits = F.one_hot(small.long(), 19).permute(2, 0, 1).float() * 10
    at_profile, at_full = scoring.Scorer(19), scoring.Scorer(19)
    at_profile.add(logits, small)
    at_full.add(scoring.upsample(logits, (64, 128)), label)
    assert at_profile.compute()["miou"] == 1.0
    assert at_full.compute()["miou"] < 0.9


class Asymmetric(nn.Module):
    """Logits that depend on the horizontal position: mirroring changes them."""

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1)
        return torch.cat([x[:, :1] + ramp, x[:, 1:2] - ramp, x[:, 2:3] * 0.5], 1)


def test_flip_tta_is_the_mean_softmax_of_the_image_and_its_mirror():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 16)
    model = Asymmetric()
    views = tta.forward_views(model, x, "flip")
    assert len(views) == 2
    got = scoring.scores_at(views, 1, (16, 32))
    plain = F.interpolate(model(x), size=(16, 32), mode="bilinear", align_corners=False)[1]
    mirrored = F.interpolate(model(x.flip(-1)), size=(16, 32), mode="bilinear", align_corners=False)[1].flip(-1)
    assert torch.allclose(got, (plain.softmax(0) + mirrored.softmax(0)) / 2, atol=1e-6)
    assert not torch.allclose(plain.softmax(0), mirrored.softmax(0))  # the test would not see a missing flip


def test_multiscale_views_are_the_mmseg_ratios_and_ratio_one_is_the_validation_transform():
    from torchvision import tv_tensors

    profile = resolve_profile("low")
    image = tv_tensors.Image(torch.randint(0, 256, (3, 512, 1024), dtype=torch.uint8))
    views = tta.MultiScaleViews(profile)(image)
    assert [tuple(v.shape[-2:]) for v in views] == [
        (144, 288),
        (216, 432),
        (288, 576),
        (360, 720),
        (432, 864),
        (504, 1008),
    ]
    assert torch.equal(views[2], val_transform(profile)(image))
    batch = scoring.collate([(views, torch.zeros(4, 4)), (views, torch.zeros(5, 5))])
    assert len(batch[0]) == 6 and batch[0][0].shape == (2, 3, 144, 288) and len(batch[1]) == 2
    assert len(tta.forward_views(Asymmetric(), batch[0], "multiscale")) == 12


def test_train_ids_map_back_to_the_cityscapes_label_ids():
    for c in CLASSES:
        if 0 <= c.train_id < 255:
            assert int(export.TRAIN_ID_TO_LABEL_ID[c.train_id]) == c.id
    assert set(export.TRAIN_ID_TO_LABEL_ID[:19].tolist()) == TRAIN_LABEL_IDS


def test_export_writes_label_id_pngs_and_overlays(tmp_path):
    source = tmp_path / "frankfurt_000000_000019_leftImg8bit.png"
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(source)
    prediction = torch.arange(48).reshape(6, 8) % 19
    writer = export.PredictionExport(
        tmp_path / "out", [Path("frankfurt") / source.name], [str(source)], tmp_path / "out_overlay"
    )
    writer.write(0, prediction)
    with Image.open(tmp_path / "out" / "frankfurt" / source.name) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "L", (8, 6))
        ids = np.asarray(png)
    assert ids.tolist() == export.TRAIN_ID_TO_LABEL_ID[prediction].tolist()
    assert read_train_ids(str(tmp_path / "out" / "frankfurt" / source.name)).tolist() == prediction.tolist()
    with Image.open(tmp_path / "out_overlay" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit_overlay.jpg") as jpg:
        assert jpg.size == (8, 6)
    assert not list((tmp_path / "out").rglob(".*tmp"))


# --------------------------------------------------------------------------------------- full-resolution labels


def test_full_resolution_labels_cached_or_not_are_the_original_train_ids(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", num_train=1, num_val=3, size=(256, 128), seed=3)
    profile = resolve_profile("low", {"low": ((128, 64), (96, 48))})
    cached = CityscapesSegmentation(
        root, "val", val_transform(profile), profile=profile, full_labels=True, cache_dir=tmp_path / "cache"
    )
    plain = CityscapesSegmentation(root, "val", val_transform(profile), full_labels=True, cache=False)
    assert cached.label_cache is not None and plain.label_cache is None
    assert (cached.label_cache.directory / "labels.npy").is_file() and cached.label_cache.directory.is_relative_to(
        tmp_path / "cache"
    )
    for index in range(3):
        (image_a, label_a), (image_b, label_b) = cached[index], plain[index]
        assert torch.equal(image_a, image_b) and image_a.shape == (3, 64, 128)
        assert label_a.dtype == torch.uint8 and torch.equal(label_a, label_b)
        assert torch.equal(label_a, read_train_ids(cached.labels[index])) and label_a.shape == (128, 256)
    # a changed label file is seen (size and mtime in the manifest)
    path = Path(cached.labels[0])
    changed = np.asarray(Image.open(path)).copy()
    changed[:8] = 26  # car
    Image.fromarray(changed).save(path)
    again = CityscapesSegmentation(
        root, "val", val_transform(profile), profile=profile, full_labels=True, cache_dir=tmp_path / "cache"
    )
    assert torch.equal(again[0][1], read_train_ids(str(path)))


def test_labels_of_differing_sizes_are_not_cached(tmp_path):
    from training.data.cache import prepare_label_cache

    labels = []
    for i, size in enumerate(((16, 8), (20, 10))):
        labels.append(tmp_path / f"l{i}.png")
        Image.fromarray(np.full(size[::-1], 7, np.uint8)).save(labels[-1])
    assert prepare_label_cache(tmp_path, "val", [str(p) for p in labels], cache_dir=tmp_path / "c") is None


def test_demo_test_split_has_images_only_and_leaves_train_and_val_unchanged(tmp_path):
    small = {"num_train": 2, "num_val": 2, "size": (128, 64), "seed": 4}
    with_test = make_demo_dataset(tmp_path / "with", **small, num_test=3)
    without = make_demo_dataset(tmp_path / "without", **small)
    images = sorted((with_test / "leftImg8bit" / "test").rglob("*.png"))
    assert len(images) == 3 and {p.parent.name for p in images} <= set(TEST_CITIES)
    assert all(re.fullmatch(r"[a-z]+_\d{6}_\d{6}_leftImg8bit\.png", p.name) for p in images)
    assert not (with_test / "gtFine" / "test").exists()
    for split in ("train", "val"):
        ours = [p for top in ("leftImg8bit", "gtFine") for p in sorted((without / top / split).rglob("*.png"))]
        assert len(ours) == 4
        for path in ours:
            assert (with_test / path.relative_to(without)).read_bytes() == path.read_bytes()
    assert make_demo_dataset(tmp_path / "without", **small) == without  # an old set stays valid (no regeneration)


# --------------------------------------------------------------------------- end to end, with the official evaluator

FAST = (
    "--latency-runs",
    "1",
    "--min-seconds",
    "0",
    "--warmup",
    "0",
    "--agreement-images",
    "1",
    "--num-workers",
    "0",
    "--device",
    "cpu",
)


def calibrated_model(data: Path, path: Path) -> None:
    """Random weights with the BatchNorm statistics of the training images: predictions that vary from pixel to
    pixel (a stage from plain random weights predicts one class everywhere, which would make a weak oracle test)."""
    import fast_scnn

    torch.manual_seed(0)
    model = fast_scnn.Model()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.momentum = None  # cumulative average
    dataset = CityscapesSegmentation(data, "train", val_transform(resolve_profile("low")), cache=False)
    with torch.no_grad():
        model.train()(to_model_input(torch.stack([dataset[i][0] for i in range(len(dataset))]), "cpu"))
    torch.save(model.state_dict(), path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained briefly on 1024x512 demo images (larger than profile 1's 576x288), with its stage."""
    data = make_demo_dataset(
        tmp_path_factory.mktemp("demo1024"), num_train=4, num_val=4, size=(1024, 512), seed=0, num_test=2
    )
    work = tmp_path_factory.mktemp("work")
    (work / "models").mkdir()
    calibrated_model(data, work / "models" / "init.pth")
    result = run_script(
        "train.py",
        "--data-dir",
        str(data),
        "--profile",
        "low",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--lr",
        "1e-4",
        "--experiment-id",
        "e",
        "--no-cache",
        "--previous-model-path",
        "models/init.pth",
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {"data": data, "work": work, "stdout": result.stdout, "model": work / "models" / "e.pth"}


def official_scores(data: Path, predictions: Path) -> dict:
    """cityscapesscripts' evalPixelLevelSemanticLabeling on the exported PNGs, as its main() finds them."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    args.evalInstLevelScore = False  # the demo set has no *_instanceIds.png
    args.JSONOutput, args.quiet = False, True
    args.predictionPath, args.predictionWalk = str(predictions), None
    ground_truth = sorted(str(p) for p in (data / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    found = [official.getPrediction(args, gt) for gt in ground_truth]
    return official.evaluateImgLists(found, ground_truth, args)


@pytest.mark.slow
def test_stage_efficiency_tool_and_official_evaluator_give_one_number(trained, tmp_path):
    data, work = trained["data"], trained["work"]
    state = torch.load(work / "checkpoints" / "e" / "state.pth", weights_only=True)
    matrix = ConfusionMatrix(19)
    matrix.matrix = state["best_confusion_matrix"]
    stage = matrix.compute()
    # predictions of several classes, right and wrong: a sensitive comparison
    assert int((matrix.matrix.sum(0) > 0).sum()) >= 4 and sum(v > 0 for v in stage["iou"] if not math.isnan(v)) >= 2
    # every full-resolution val pixel is counted (1024x512, void excluded)
    valid = sum(int((read_train_ids(str(p)) != 255).sum()) for p in (data / "gtFine" / "val").rglob("*labelIds.png"))
    assert int(state["best_confusion_matrix"].sum()) == valid
    assert "val at full res" in trained["stdout"]

    out = tmp_path / "export"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(trained["model"]),
        "--profile",
        "low",
        "--data-dir",
        str(data),
        "--export-predictions",
        str(out),
        *FAST,
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exported = sorted(out.rglob("*.png"))
    assert [p.relative_to(out) for p in exported] == sorted(
        p.relative_to(data / "leftImg8bit" / "val") for p in (data / "leftImg8bit" / "val").rglob("*.png")
    )
    for path in exported:
        with Image.open(path) as png:
            assert (png.mode, png.size) == ("L", (1024, 512))
            assert set(np.unique(np.asarray(png)).tolist()) <= TRAIN_LABEL_IDS

    scores = official_scores(data, out)
    names = [c.name for c in sorted((c for c in CLASSES if 0 <= c.train_id < 255), key=lambda c: c.train_id)]
    for name, ours in zip(names, stage["iou"]):
        theirs = scores["classScores"][name]
        assert (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) < 1e-12, (name, ours, theirs)
    assert abs(scores["averageScoreClasses"] - stage["miou"]) < 1e-12

    csv_path = tmp_path / "efficiency.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(trained["model"]),
        "--profile",
        "low",
        "--data-dir",
        str(data),
        "--output-csv",
        str(csv_path),
        *FAST,
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(csv_path, newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert (row["val_resolution"], row["tta"]) == ("full", "none")
    assert abs(float(row["miou"]) - stage["miou"]) < 1e-6
    with open(work / "measurements" / "durations.csv", newline="") as file:
        (duration,) = list(csv.DictReader(file))
    assert abs(float(duration["best_miou"]) - stage["miou"]) < 1e-6 and duration["val_resolution"] == "full"


@pytest.mark.slow
def test_test_split_and_photos_are_exported_without_scoring(trained, tmp_path):
    data, work = trained["data"], trained["work"]
    out = tmp_path / "test"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(trained["model"]),
        "--profile",
        "low",
        "--data-dir",
        str(data),
        "--export-predictions",
        str(out),
        "--split",
        "test",
        "--overlay",
        "--tta",
        "flip",
        *FAST,
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mIoU" not in result.stdout and "not scored" in result.stdout
    sources = sorted((data / "leftImg8bit" / "test").rglob("*.png"))
    assert [p.relative_to(out) for p in sorted(out.rglob("*.png"))] == [
        p.relative_to(data / "leftImg8bit" / "test") for p in sources
    ]
    overlays = sorted((tmp_path / "test_overlay").rglob("*_overlay.jpg"))
    assert len(overlays) == len(sources) == 2

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.open(sources[0]).resize((300, 200)).save(photos / "a.jpg")
    Image.open(sources[1]).crop((0, 0, 400, 500)).save(photos / "sub" / "b.png")
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(trained["model"]),
        "--profile",
        "low",
        "--images",
        str(photos),
        "--export-predictions",
        str(tmp_path / "p"),
        "--overlay",
        str(tmp_path / "po"),
        *FAST,
        cwd=work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, size in (("a.png", (300, 200)), ("sub/b.png", (400, 500))):
        with Image.open(tmp_path / "p" / name) as png:
            assert (png.mode, png.size) == ("L", size)
        with Image.open(tmp_path / "po" / name.replace(".png", "_overlay.jpg")) as jpg:
            assert jpg.size == size


@pytest.mark.slow
def test_tta_gives_a_row_per_mode_with_the_same_latency(trained, tmp_path):
    csv_path = tmp_path / "efficiency.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(trained["model"]),
        "--profile",
        "low",
        "--data-dir",
        str(trained["data"]),
        "--tta",
        "none",
        "flip",
        "multiscale",
        "--output-csv",
        str(csv_path),
        *FAST,
        cwd=trained["work"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["tta"] for row in rows] == ["none", "flip", "multiscale"]
    assert len({row["latency_ms_plain"] for row in rows}) == 1 and all(0 < float(r["miou"]) <= 1 for r in rows)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--images", "{tmp}"], "--images: expected --export-predictions"),
        (["--overlay"], "--overlay: expected --export-predictions"),
        (["--split", "test"], "expected --export-predictions"),
        (["--export-predictions", "{tmp}/o", "--tta", "none", "flip"], "expected one --tta mode"),
        (["--export-predictions", "{tmp}/o", "--val-resolution", "profile"], "expected --val-resolution full"),
        (["--export-predictions", "{tmp}/o", "--images", "{tmp}/nowhere"], "--images {tmp}/nowhere: no such directory"),
        (["--export-predictions", "{tmp}/o", "--split", "test"], "missing leftImg8bit/test/"),
    ],
)
def test_bad_export_flags_are_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    import evaluate_efficiency
    import fast_scnn

    model = tmp_path / "m.pth"
    torch.save(fast_scnn.Model().state_dict(), model)
    monkeypatch.chdir(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    argv = ["--current-model-path", str(model), "--data-dir", str(tmp_path), *args]
    code, out, err = run_main(evaluate_efficiency.main, argv)
    assert code == 2, out + err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
