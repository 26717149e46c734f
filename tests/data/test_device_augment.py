"""training/data/photometric.py: the batched colour jitter against torchvision's ColorJitter sample by sample, the
parameters drawn in the workers, the normalisation, and the loader's uint8 format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from training.data.dataset import (
    CityscapesSegmentation,
    EpochSampler,
    make_loader,
    train_transform,
)
from training.data.photometric import (
    MEAN,
    STD,
    ColorJitterOp,
    PhotometricOp,
    PhotometricPipeline,
    apply_in_worker,
    original_photometric,
)
from training.profiles import Profile

pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),  # torchvision 0.29
    pytest.mark.usefixtures("one_thread"),  # conftest.py
]


def test_batched_colour_jitter_matches_torchvision_per_sample():
    """Each sample of one batch gets its own order and factors (drawn as the worker draws them); every pixel equals
    torchvision's uint8 ColorJitter under the same seed but for a few in 10^5 (float rounding in the hue op: one
    level, two after a later contrast/saturation op), on blocky images and on random noise (all hues, saturations)."""
    rng = np.random.default_rng(0)
    smooth = [
        torch.from_numpy(np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8)))
        .permute(2, 0, 1)
        .contiguous()
        for _ in range(20)
    ]
    noise = [torch.from_numpy(rng.integers(0, 256, (3, 96, 128), dtype=np.uint8)) for _ in range(20)]
    images = torch.stack([image for pair in zip(smooth, noise) for image in pair])  # 40 x 3 x 96 x 128
    op = ColorJitterOp(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    reference = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    params = []
    for seed in range(len(images)):
        torch.manual_seed(seed)
        params.append(op.draw())
    params = torch.stack(params)
    assert len({tuple(p[:4].tolist()) for p in params}) > 5  # several op orders in the batch
    got = PhotometricPipeline([op]).augment_batch(images, params)  # the batched kernel, as on a GPU
    assert torch.equal(PhotometricPipeline([op]).augment(images, params), got)  # on the CPU: sample by sample
    assert got.dtype == torch.float32 and got.shape == images.shape
    assert torch.equal(got, got.round()) and got.min() >= 0 and got.max() <= 255
    different, total = 0, 0
    for seed, image in enumerate(images):
        torch.manual_seed(seed)
        expected = reference(tv_tensors.Image(image))
        difference = (got[seed].int() - expected.int()).abs()
        assert difference.max() <= 2, seed
        different += int((difference > 0).sum())
        total += difference.numel()
    assert different / total < 1e-3
    # the same sample alone (as a CPU-only run's worker applies it) gives the same values
    one = apply_in_worker(PhotometricPipeline([op]), images[3], params[3])
    assert one.dtype == torch.uint8 and (one.int() - got[3].int()).abs().max() <= 1


def test_draw_repeats_torchvision_make_params():
    op = ColorJitterOp(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    torch.manual_seed(5)
    expected = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1).make_params([])
    torch.manual_seed(5)
    params = op.draw()
    assert params[:4].tolist() == expected["fn_idx"].tolist()
    assert params[4:].tolist() == pytest.approx(
        [expected[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")], rel=1e-6
    )
    # an op that is off is skipped: brightness only leaves contrast, saturation and hue alone
    only = PhotometricPipeline([ColorJitterOp(brightness=0.5)])
    torch.manual_seed(1)
    p = only.draw()
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(only.augment(image, p[None]), image.float().mul(p[4]).clamp(0, 255).floor())


def test_normalisation_and_memory_format():
    images = torch.randint(0, 256, (2, 3, 6, 10), dtype=torch.uint8)
    out = PhotometricPipeline([]).apply(images, torch.zeros(2, 0), memory_format=torch.channels_last)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)


class AddOffset(PhotometricOp):
    """A made-up op: the way another photometric op plugs in (parameters drawn per sample, applied per sample)."""

    num_params = 1

    def draw(self):
        return torch.randint(0, 10, (1,)).float()

    def apply(self, x, params):
        return (x + params.view(-1, 1, 1, 1)).clamp(0, 255)


def test_a_second_op_plugs_in_after_the_jitter():
    pipeline = PhotometricPipeline([ColorJitterOp(brightness=0.3), AddOffset()])
    assert pipeline.num_params == 9
    torch.manual_seed(0)
    params = torch.stack([pipeline.draw() for _ in range(3)])
    images = torch.randint(0, 200, (3, 3, 4, 4), dtype=torch.uint8)
    jitter_only = PhotometricPipeline([ColorJitterOp(brightness=0.3)]).augment(images, params[:, :8])
    assert torch.equal(pipeline.augment(images, params), (jitter_only + params[:, 8].view(-1, 1, 1, 1)).clamp(0, 255))


def test_training_samples_are_uint8_with_their_parameters(tiny_cityscapes):
    profile = Profile("test", 0, (256, 128), (192, 96))
    dataset = CityscapesSegmentation(
        tiny_cityscapes, "train", train_transform(profile), photometric=original_photometric()
    )
    sampler = EpochSampler(len(dataset), 3, True)
    loader = make_loader(dataset, sampler, 2, 0, torch.device("cpu"), drop_last=True)
    images, masks, params = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 96, 192)
    assert masks.dtype == torch.uint8 and masks.shape == (2, 96, 192)
    assert params.dtype == torch.float32 and params.shape == (2, 8)
    assert images.element_size() * images[0].numel() + masks.element_size() * masks[0].numel() == 4 * 96 * 192
    # the parameters are those of the sample's seed, drawn after the flip and the crop
    index, seed = next(iter(sampler))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train_transform(profile)(tv_tensors.Image(dataset.load(index)[0]), tv_tensors.Mask(dataset.load(index)[1]))
        assert torch.equal(original_photometric().draw(), params[0])
