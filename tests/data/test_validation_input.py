"""Validation and evaluation batches travel as uint8 (issue 21 item 9) and are normalised on the device.

Before, the workers shipped float32 images (4 bytes a pixel and channel), and with the loader's prefetch the whole
validation split of Cityscapes could sit in shared memory at profile 5. The scores must not move: the model's input
made on the device (`to_model_input`) is the old worker-side float pipeline (ToDtype(scale=True), Normalize) bit for
bit, checked here against that pipeline written out independently.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms import v2

import fast_scnn
from training.data.dataset import (
    NUM_CLASSES,
    CityscapesSegmentation,
    EpochSampler,
    make_loader,
    resize,
    to_model_input,
    val_transform,
)
from training.data.photometric import MEAN, STD
from training.evaluation import scoring as evaluation
from training.profiles import Profile

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29

PROFILE = Profile("p", 0, (192, 96), (160, 80))  # smaller than the tiny set's 256x128: the resize does something


def float_pipeline(profile: Profile) -> v2.Transform:
    """The validation transform before this change: the workers resized, converted to float and normalised."""
    return v2.Compose([resize(profile), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def val_loader(root, transform, cache_dir, workers: int = 0):
    dataset = CityscapesSegmentation(root, "val", transform, profile=PROFILE, full_labels=True, cache_dir=cache_dir)
    sampler = EpochSampler(len(dataset), 0, False)
    return make_loader(dataset, sampler, 2, workers, torch.device("cpu"), False, collate_fn=evaluation.collate)


def test_validation_batches_are_uint8_a_quarter_of_the_float_bytes(tiny_cityscapes, tmp_path):
    images, targets = next(iter(val_loader(tiny_cityscapes, val_transform(PROFILE), tmp_path, workers=1)))
    old_images, _ = next(iter(val_loader(tiny_cityscapes, float_pipeline(PROFILE), tmp_path)))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 96, 192)
    assert images.nbytes == 2 * 3 * 96 * 192 and old_images.nbytes == 4 * images.nbytes
    assert all(target.dtype == torch.uint8 and target.shape == (128, 256) for target in targets)
    assert torch.equal(to_model_input(images, "cpu"), old_images)


def test_model_input_is_the_float_pipeline_bit_for_bit():
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    noise = torch.randint(0, 256, (2, 3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for images in (every_value, noise):
        reference = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(images))
        assert torch.equal(to_model_input(images, "cpu"), reference)
        views = to_model_input((images, images.flip(-1)), "cpu", torch.channels_last)
        assert torch.equal(views[1], reference.flip(-1)) and views[1].is_contiguous(memory_format=torch.channels_last)
    already = torch.randn(1, 3, 8, 8)
    assert torch.equal(to_model_input(already, "cpu"), already)  # float input is the model's input already


def calibrated_model(root) -> nn.Module:
    """Random weights with the BatchNorm statistics of the training images: predictions that vary per pixel."""
    torch.manual_seed(0)
    model = fast_scnn.Model()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.momentum = None  # cumulative average
    dataset = CityscapesSegmentation(root, "train", float_pipeline(PROFILE), cache=False)
    with torch.no_grad():
        model.train()(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    return model.eval()


@torch.no_grad()
def scores_of_the_float_pipeline(model, root, cache_dir) -> dict:
    """The stage's validation as it ran before: float images from the workers, straight into the model."""
    scorer = evaluation.Scorer(NUM_CLASSES, "cpu", loss=True)
    for images, targets in val_loader(root, float_pipeline(PROFILE), cache_dir):
        assert images.dtype == torch.float32
        scorer.update([model(images).float()], targets)
    return scorer.compute()


def test_the_scores_are_unchanged_in_the_tool_and_in_the_stage(tiny_cityscapes, tmp_path, monkeypatch):
    import train
    from training.engine.build import build_stage
    from training.engine.cli import add_previous_model_args, get_args_parser
    from training.engine.loop import validate

    model = calibrated_model(tiny_cityscapes)
    before = scores_of_the_float_pipeline(model, tiny_cityscapes, tmp_path / "cache")
    assert 0 < before["miou"] < 1 and len(set(before["confusion_matrix"].argmax(1).tolist())) > 1  # not one class

    tool = evaluation.evaluate_accuracy(model, val_loader(tiny_cityscapes, val_transform(PROFILE), tmp_path), "cpu")
    assert abs(tool["miou"] - before["miou"]) <= 1e-6
    assert torch.equal(tool["confusion_matrix"], before["confusion_matrix"])

    torch.save(model.state_dict(), tmp_path / "calibrated.pth")
    monkeypatch.chdir(tmp_path)
    parser = get_args_parser("validation", "p")
    add_previous_model_args(parser)
    args = parser.parse_args(
        ["--data-dir", str(tiny_cityscapes), "--previous-model-path", str(tmp_path / "calibrated.pth")]
        + ["--num-workers", "0", "--batch-size", "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    )
    stage = build_stage(args, {"p": ((192, 96), (160, 80))}, train.make_loss, "train.py")
    try:
        assert next(iter(stage.val_loader))[0].dtype == torch.uint8
        metrics, preview = validate(stage)
    finally:
        stage.close_loaders()
    assert abs(metrics["miou"] - before["miou"]) <= 1e-6 and abs(metrics["valid_loss"] - before["valid_loss"]) <= 1e-6
    assert torch.equal(metrics["confusion_matrix"].cpu(), before["confusion_matrix"])
    first = CityscapesSegmentation(tiny_cityscapes, "val", val_transform(PROFILE), cache=False)[0][0]
    assert torch.equal(preview[0][0], first)  # the preview shows the image as it is (no round trip through floats)
