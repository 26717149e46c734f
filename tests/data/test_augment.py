"""mmseg's augmentation (training.data.transforms): photometric distortion against a per-pixel colorsys reference, the
cat_max_ratio crop, void padding, and the guarantees of the pipeline (seeded, cached == uncached, workers-independent).
"""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.data import transforms as augment
from training.data.dataset import CityscapesSegmentation, EpochSampler
from training.data.photometric import apply_in_worker
from training.data.transforms import (
    PAD_COLOUR,
    KeepPadding,
    MmsegTrainTransform,
    PhotoMetricDistortion,
    mmseg_pipeline,
    train_pipeline,
)
from training.profiles import Profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _reference(image: np.ndarray, beta, contrast_first, contrast, saturation, hue) -> np.ndarray:
    """mmseg's ops pixel by pixel with Python's colorsys, each op truncated to integers 0..255."""
    x = image.astype(np.float64)

    def contrast_op(v):
        return np.floor(np.clip(v * contrast, 0, 255)) if contrast != 1.0 else v

    if beta:
        x = np.floor(np.clip(x + beta, 0, 255))
    if contrast_first:
        x = contrast_op(x)
    for factor, shift in ((saturation, 0.0), (1.0, hue / 180.0)):
        if factor == 1.0 and shift == 0.0:
            continue
        out = np.empty_like(x)
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                h, s, v = colorsys.rgb_to_hsv(*(x[:, i, j] / 255.0))
                rgb = colorsys.hsv_to_rgb((h + shift) % 1.0, min(s * factor, 1.0), v)
                out[:, i, j] = np.floor(np.array(rgb) * 255.0 + 1e-6)
        x = out
    if not contrast_first:
        x = contrast_op(x)
    return x


PARAMS = [
    (20.5, 1, 1.3, 1.0, 0.0),
    (-31.0, 0, 0.6, 1.0, 0.0),
    (0.0, 1, 1.0, 1.4, 0.0),
    (0.0, 0, 1.0, 0.55, 0.0),
    (0.0, 1, 1.0, 1.0, 11.0),
    (0.0, 0, 1.0, 1.0, -18.0),
    (-12.0, 0, 1.45, 0.7, 5.0),
    (25.0, 1, 0.8, 1.5, -7.0),
    (0.0, 1, 1.0, 1.0, 0.0),
]


def test_photometric_distortion_matches_a_colorsys_reference():
    # one batch with a different parameter set per sample (the device op picks each op's samples)
    images = np.random.default_rng(0).integers(0, 256, (len(PARAMS), 3, 6, 9)).astype(np.uint8)
    images[:, :, 0, :3] = 128  # grey pixels: no chroma, hue undefined
    batch = PhotoMetricDistortion().apply(torch.from_numpy(images).float(), torch.tensor(PARAMS)).numpy()
    for image, ours, params in zip(images, batch, PARAMS):
        reference = _reference(image, *params)
        assert ours.min() >= 0 and ours.max() <= 255 and np.array_equal(ours, np.floor(ours))
        beta, contrast_first, contrast, saturation, hue = params
        amplified = not contrast_first and contrast > 1 and (saturation != 1 or hue != 0)  # a level x 1.45 after HSV
        assert np.abs(ours - reference).max() <= (2 if amplified else 1), (params, np.abs(ours - reference).max())
        assert (ours != reference).mean() < 0.25  # the hue shift rounds as torchvision, colorsys floors
    assert np.array_equal(batch[-1], images[-1])  # every op off: unchanged


def test_photometric_draws_are_in_mmsegs_ranges_and_each_op_is_on_half_the_time():
    op = PhotoMetricDistortion()
    torch.manual_seed(0)
    draws = torch.stack([op.draw() for _ in range(800)])
    beta, first, contrast, saturation, hue = draws.unbind(1)
    assert beta.abs().max() <= 32 and ((contrast >= 0.5) & (contrast <= 1.5)).all()
    assert ((saturation >= 0.5) & (saturation <= 1.5)).all()
    assert torch.equal(hue, hue.round()) and hue.min() >= -18 and hue.max() <= 17
    for on in (beta != 0, first == 1, contrast != 1, saturation != 1, hue != 0):
        assert 0.4 < on.float().mean() < 0.6


PROFILE = Profile("test", 0, (64, 32), (48, 24))


def _sample(mask: np.ndarray, seed: int, profile: Profile = PROFILE):
    image = torch.from_numpy(np.stack([mask.astype(np.uint8) * 20 + 10] * 3))
    from torchvision import tv_tensors

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MmsegTrainTransform(profile)(tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask)))


def _count_crops(monkeypatch) -> list:
    calls = []
    original = augment._random_crop_box

    def counted(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(augment, "_random_crop_box", counted)
    return calls


def test_crop_with_cat_max_ratio_redraws_up_to_ten_times(monkeypatch):
    monkeypatch.setattr(augment, "RATIO_RANGE", (1.0, 1.0))
    calls = _count_crops(monkeypatch)
    single = np.zeros((32, 64), dtype=np.uint8)  # one class everywhere: no crop passes, the 11th draw is kept
    _, mask = _sample(single, 0)
    assert len(calls) == 11 and mask.shape == (24, 48)

    varied = np.zeros((32, 64), dtype=np.uint8)
    varied[:, :20] = 1  # class 1 in the left 20 columns: only crops reaching far enough left pass
    varied[:4] = 255
    redrawn = 0
    for seed in range(30):
        calls.clear()
        _, mask = _sample(varied, seed)
        counts = torch.bincount(mask.reshape(-1), minlength=256)[:255]
        passes = (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75
        assert passes or len(calls) == 11, seed
        assert len(calls) == 1 or passes or len(calls) == 11
        redrawn += len(calls) > 1
    assert redrawn > 0


def test_smaller_rescaled_image_is_padded_with_void_and_the_mean_colour_that_the_distortion_leaves(monkeypatch):
    monkeypatch.setattr(augment, "RATIO_RANGE", (0.5, 0.5))  # 64x32 -> 32x16, smaller than the 48x24 patch
    mask = np.ones((32, 64), dtype=np.uint8)
    mask[:, 32:] = 2
    image, out = _sample(mask, 3)
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 48) and out.shape == (24, 48)
    assert (out[16:] == 255).all() and (out[:, 32:] == 255).all() and not (out[:16, :32] == 255).any()
    pad = torch.tensor(PAD_COLOUR, dtype=torch.uint8).view(3, 1, 1)
    assert (image[:, 16:] == pad).all() and (image[:, :, 32:] == pad).all()

    # the device ops: a strong distortion changes the image, and the padded pixels are the mean colour again
    transform, pipeline = mmseg_pipeline(PROFILE)
    transform.valid_hw = (16, 32)
    params = torch.cat([torch.tensor([30.0, 1, 1.4, 1.5, 9.0]), pipeline.ops[1].draw()])
    assert params[5:].tolist() == [16, 32]
    distorted = apply_in_worker(pipeline, image, params)
    assert not torch.equal(distorted[:, :16, :32], image[:, :16, :32])
    assert torch.equal(distorted[:, 16:], image[:, 16:]) and torch.equal(distorted[:, :, 32:], image[:, :, 32:])
    assert torch.equal(
        distorted[:, :16, :32],
        apply_in_worker(pipeline, image, torch.cat([params[:5], torch.tensor([24.0, 48.0])]))[:, :16, :32],
    )
    normalised = pipeline.apply(image[None], params[None])[0]
    assert normalised[:, 16:].abs().max() < 0.01  # ~0 after normalisation, as mmseg's zero padding


def test_keep_padding_restores_each_samples_own_padding():
    x = torch.full((2, 3, 4, 5), 7.0)
    out = KeepPadding(None).apply(x.clone(), torch.tensor([[4.0, 5.0], [2.0, 3.0]]))
    assert torch.equal(out[0], x[0])
    pad = torch.tensor(PAD_COLOUR, dtype=torch.float32).view(3, 1, 1)
    assert (out[1, :, 2:] == pad).all() and (out[1, :, :, 3:] == pad).all() and (out[1, :, :2, :3] == 7.0).all()


def test_rescale_ratio_spans_half_to_twice(monkeypatch):
    sizes = []
    functional = augment.TF

    def spy(inpt, size, **kwargs):
        sizes.append(tuple(size))
        return functional.resize(inpt, size, **kwargs)

    monkeypatch.setattr(augment, "TF", SimpleNamespace(resize=spy, pad=functional.pad))
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[:, ::3] = 1
    for seed in range(40):
        _sample(mask, seed)
    heights = [h for h, w in sizes[::2]]
    assert min(heights) >= 16 and max(heights) <= 64 and min(heights) < 22 and max(heights) > 54
    assert all(w == int(h * 2) or abs(w - 2 * h) <= 1 for h, w in sizes[::2])


DOWN = Profile("down", 0, (160, 80), (128, 64))


def test_mmseg_samples_are_seeded_cached_equal_uncached_and_independent_of_workers(tiny_cityscapes, tmp_path):
    transform, photometric = train_pipeline(DOWN, "mmseg")
    cached = CityscapesSegmentation(
        tiny_cityscapes,
        "train",
        transform,
        profile=DOWN,
        cache="always",
        cache_dir=tmp_path / "cache",
        photometric=photometric,
    )
    plain = CityscapesSegmentation(
        tiny_cityscapes, "train", transform, profile=DOWN, cache=False, photometric=photometric
    )
    assert cached.cache is not None
    for i in range(len(plain)):
        for seed in (0, 99, 2**61 + 5):
            a, b = cached[(i, seed)], plain[(i, seed)]
            assert all(torch.equal(x, y) for x, y in zip(a, b)), (i, seed)
            assert a[0].shape == (3, 64, 128) and a[1].shape == (64, 128) and a[2].shape == (7,)
            assert a[0].dtype == torch.uint8 and a[1].dtype == torch.uint8
    assert not torch.equal(cached[(0, 1)][2], cached[(0, 2)][2])

    def batches(workers):
        sampler = EpochSampler(len(cached), seed=5, shuffle=True)
        sampler.set_epoch(1)
        loader = DataLoader(
            cached, batch_size=2, sampler=sampler, num_workers=workers, generator=torch.Generator().manual_seed(0)
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert all(torch.equal(x, y) for a, b in zip(serial, parallel) for x, y in zip(a, b))


def test_benchmark_times_mmseg_against_the_original_augmentation(tiny_cityscapes, tmp_path):
    import re

    from conftest import run_script

    result = run_script(
        "benchmarks/input_pipeline.py",
        "--data-dir",
        str(tiny_cityscapes),
        "--profile",
        "1",
        "--num-workers",
        "1",
        "--batches",
        "2",
        "--batch-size",
        "2",
        "--cache",
        "always",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--augment",
        "mmseg",
        "--compare-augment",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "augment mmseg" in lines[0] and re.fullmatch(r"samples/s: \d+\.\d", lines[-1]), lines
    assert any(line.startswith("ours with --augment original: ") for line in lines)
    assert any(re.match(r"ratio --augment mmseg / original: \d+\.\d\dx", line) for line in lines)
