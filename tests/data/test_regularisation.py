"""Regularisation per stage (issue 23): --scale-range, --photometric-strength, --dropout, --whole-images, and
DIST's weights; the flags' refusals."""

from __future__ import annotations

import re

import pytest
import torch
from torchvision import tv_tensors

import fast_scnn
from training.data.photometric import ColorJitterOp
from training.data.transforms import KeepPadding, PhotoMetricDistortion, train_pipeline
from training.engine.cli import add_distillation_args, check_args, get_args_parser
from training.engine.recipes import resolve_recipe
from training.errors import UserError
from training.losses import DistillationLoss, dist_loss
from training.models.build import build_model
from training.profiles import Profile

PROFILE = Profile("low", 1, (256, 128), (192, 96))


def _sample():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 128, 256), dtype=torch.uint8)
    mask = torch.randint(0, 19, (128, 256), dtype=torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)  # as the data set hands them to its transform


def test_scale_range_rescales_before_the_crop_and_pads_with_void():
    # ratio 0.5: the 256x128 image becomes 128x64, smaller than the 192x96 patch: 64 rows x 128 columns of it, void
    transform, photometric = train_pipeline(PROFILE, "original", (0.5, 0.5), 1.0)
    image, mask = transform(*_sample())
    assert image.shape == (3, 96, 192) and mask.shape == (96, 192)
    assert (mask[64:] == 255).all() and (mask[:, 128:] == 255).all() and (mask[:64, :128] < 19).all()
    assert [type(op) for op in photometric.ops] == [ColorJitterOp, KeepPadding]
    # ratio 1 (the original's default): the original's own crop, no padding op
    transform, photometric = train_pipeline(PROFILE, "original", (1.0, 1.0), 1.0)
    image, mask = transform(*_sample())
    assert mask.shape == (96, 192) and (mask < 19).all() and [type(op) for op in photometric.ops] == [ColorJitterOp]


def test_photometric_strength_multiplies_the_colour_ranges():
    _, photometric = train_pipeline(PROFILE, "original", None, 0.5)
    jitter = photometric.ops[0].jitter
    assert [*jitter.brightness, *jitter.contrast, *jitter.saturation] == pytest.approx([0.85, 1.15] * 3)
    assert list(jitter.hue) == pytest.approx([-0.05, 0.05])
    assert train_pipeline(PROFILE, "original", None, 0.0)[1].ops == []
    _, photometric = train_pipeline(PROFILE, "mmseg", None, 0.5)
    distortion = photometric.ops[0]
    assert isinstance(distortion, PhotoMetricDistortion)
    assert distortion.brightness_delta == 16 and distortion.contrast_range == (0.75, 1.25)
    assert distortion.saturation_range == (0.75, 1.25) and distortion.hue_delta == 9
    assert [type(op) for op in train_pipeline(PROFILE, "mmseg", None, 0.0)[1].ops] == [KeepPadding]


def test_whole_images_are_the_profile_s_image_flipped_at_most():
    transform, photometric = train_pipeline(PROFILE, "original", None, 0.0, whole_images=True)
    image, mask = _sample()
    torch.manual_seed(1)
    seen = set()
    for _ in range(8):
        out_image, out_mask = transform(image, mask)
        flipped = torch.equal(out_mask, mask.flip(-1))
        assert flipped or torch.equal(out_mask, mask)
        assert torch.equal(out_image, image.flip(-1) if flipped else image) and out_image.shape == (3, 128, 256)
        seen.add(flipped)
    assert seen == {True, False} and photometric.ops == []


def test_dropout_sets_the_classifier_s_dropout():
    assert build_model("fast_scnn", 19, dropout=0.3).classifier.dropout.p == 0.3
    assert build_model("fast_scnn", 19).classifier.dropout.p == fast_scnn.Model().classifier.dropout.p == 0.1


def _parse(*argv, distillation=False):
    parser = get_args_parser("test", "low")
    if distillation:
        add_distillation_args(parser)
        argv = (*argv, "--trained-teacher-model-path", "teacher.pth")
    args = parser.parse_args(list(argv))
    resolve_recipe(args, 1)
    return args


def test_unset_regularisation_flags_are_recorded_as_the_augmentation_s_own():
    args = _parse()
    assert (args.scale_range, args.photometric_strength, args.dropout) == ("1.0,1.0", 1.0, 0.1)
    args = _parse("--recipe", "mmseg")
    assert args.scale_range == "0.5,2.0"
    args = _parse("--whole-images")
    assert (args.scale_range, args.photometric_strength) == ("1.0,1.0", 0.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scale-range", "2,1"], "--scale-range 2,1: expected LO,HI with 0 < LO <= HI <= 4"),
        (["--scale-range", "x"], "--scale-range x: expected LO,HI"),
        (["--photometric-strength", "-1"], "--photometric-strength -1.0: expected a number in [0, 5]"),
        (["--dropout", "1"], "--dropout 1.0: expected a number in [0, 1)"),
        (["--whole-images", "--scale-range", "0.5,2"], "expected 1,1 with --whole-images"),
        (["--epochs", "0"], "--epochs 0: expected an integer >= 1 (0 only with --bn-recalibrate N"),
        (["--schedule-span", "0.5:0.5", "--lr-schedule", "linear"], "--schedule-span 0.5:0.5: expected A:B with"),
        (["--schedule-span", "0:0.5"], "--schedule-span 0:0.5: expected --lr-schedule poly, linear, cosine"),
        (["--warmup-fraction", "0.1"], "--warmup-fraction 0.1: a warm-up needs --lr-schedule"),
        (["--reference-batch-size", "0"], "--reference-batch-size 0: expected an integer >= 1"),
    ],
)
def test_regularisation_and_schedule_flags_refuse_bad_values(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_args(_parse(*argv))


def test_dist_weights_reach_the_loss_and_belong_to_dist_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 4, 4))
    loss = DistillationLoss(torch.nn.Identity(), 2.0, 1.0, "dist", beta=0.25, gamma=3.0)
    _, parts = loss(student, teacher, target)
    expected = dist_loss(student, teacher, 2.0, 0.25, 3.0, target=target)
    inter = dist_loss(student, teacher, 2.0, 1.0, 0.0, target=target)
    intra = dist_loss(student, teacher, 2.0, 0.0, 1.0, target=target)
    assert parts["train_dist_loss"] == pytest.approx(expected.item()) == pytest.approx(0.25 * inter + 3.0 * intra)
    args = _parse("--kd-loss", "dist", "--dist-beta", "0.5", distillation=True)
    check_args(args)
    with pytest.raises(UserError, match="--dist-gamma 2.0: a weight of --kd-loss dist"):
        check_args(_parse("--dist-gamma", "2", distillation=True))
