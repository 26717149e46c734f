"""mmsegmentation's training augmentation (`--augment mmseg`), beside the original's in training/data/dataset.py.

In mmseg's order, under the sample's seed (so the same whatever the number of workers, and a resumed stage sees the
same samples). In the loader workers, on uint8 (`MmsegTrainTransform`):
  1. the profile's resize (what the cache stores; a no-op on a cached sample), then a random rescale by a ratio
     uniform in [0.5, 2.0] (mmseg's RandomResize of the 2048x1024 scale with ratio_range (0.5, 2.0), keep_ratio);
  2. a random crop to the patch size with cat_max_ratio 0.75: a crop whose most frequent class (void not counted)
     covers 75% or more of its labelled pixels, or that holds a single class, is drawn again, up to 10 times, and the
     last draw is kept (mmseg's RandomCrop); where the rescaled image is smaller than the patch, the crop is the
     whole extent;
  3. a horizontal flip with probability 0.5;
  4. padding to the patch size at the bottom and right: labels with void (255), the image with the mean colour
     (mmseg pads the normalised image with 0, which is the mean); no random draw, so the draws stay in mmseg's order;
then the parameters of the photometric ops are drawn (in the worker, after the flip, as mmseg draws them), and on
the training device (training/data/photometric.py, the same pipeline as the original's colour jitter):
  5. PhotoMetricDistortion (below) on every sample of the batch;
  6. the padded pixels set back to the mean colour (`KeepPadding`: mmseg pads after the distortion, so they stay
     the mean whatever the distortion did);
  7. normalisation and the memory format, as for the original augmentation.

The rescale starts from the profile's image, not from the full-size PNG, so that cached and uncached samples are
identical: a ratio above 1 upsamples the profile image (at profile 1 on Cityscapes, ratio 2 gives a 1152x576 image
interpolated from the 576x288 one, softer than a resize of the 2048x1024 PNG would be). The cache is unchanged.

Regularisation per stage (`train_pipeline`): --scale-range LO,HI replaces the rescale's ratio range (mmseg's 0.5-2 by
default; with the original augmentation, a range other than 1,1 adds the same rescale, crop and void padding without
mmseg's cat_max_ratio retries, and its colour jitter keeps the padding at the mean colour too); --photometric-strength
S multiplies the colour ops' ranges (original: ColorJitter 0.3 S / 0.3 S / 0.3 S / 0.1 S; mmseg: brightness +-32 S,
contrast and saturation 1 +- 0.5 S, hue +-18 S steps; 0 = no colour op); --whole-images trains on the profile's whole
image, flipped with probability 0.5 and nothing else (a test-resolution stage).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from training.data.dataset import IGNORE_INDEX, MEAN, resize, train_transform, whole_image_transform
from training.data.photometric import PhotometricOp, PhotometricPipeline, _hue, _to_device, original_jitter
from training.profiles import Profile

RATIO_RANGE = (0.5, 2.0)
CAT_MAX_RATIO = 0.75
CROP_RETRIES = 10
PAD_COLOUR = tuple(round(m * 255) for m in MEAN)  # the mean colour: ~0 after normalisation, as mmseg's padding


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _coin() -> bool:
    return torch.randint(0, 2, ()).item() == 1


class PhotoMetricDistortion(PhotometricOp):
    """mmseg's PhotoMetricDistortion on RGB images of integer values 0..255 (float32), each op truncated to
    integers as mmseg's uint8 arithmetic: brightness (+beta, beta uniform in [-32, 32], with probability 1/2),
    contrast (x alpha, alpha uniform in [0.5, 1.5], p 1/2; before or after the next two ops, p 1/2 each),
    saturation (HSV saturation x alpha, alpha uniform in [0.5, 1.5], p 1/2) and hue (HSV hue + delta x 2 degrees,
    delta an integer in [-18, 17], p 1/2; OpenCV's 180-step hue).

    `draw()` returns the parameters of one sample (beta, contrast first, contrast alpha, saturation alpha, hue
    delta; the identity value of an op that is off: 0, -, 1, 1, 0) in mmseg's order of draws; `apply` uses them on
    a batch (N,3,H,W) with parameters (N,5), each op on the samples that have it on only.
    The HSV ops use the closed form on max/min/chroma (no HSV image, no uint8 round trip through OpenCV), so an
    op's output can differ from OpenCV's by a level where OpenCV rounds its HSV values to uint8.
    """

    num_params = 5

    def __init__(
        self, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18
    ):
        self.brightness_delta, self.contrast_range = brightness_delta, contrast_range
        self.saturation_range, self.hue_delta = saturation_range, hue_delta

    @classmethod
    def with_strength(cls, strength: float) -> PhotoMetricDistortion:
        """mmseg's ranges multiplied by `strength` (1: mmseg's own)."""
        return cls(
            32 * strength,
            (1 - 0.5 * strength, 1 + 0.5 * strength),
            (1 - 0.5 * strength, 1 + 0.5 * strength),
            round(18 * strength),
        )

    def draw(self) -> torch.Tensor:
        beta = _uniform(-self.brightness_delta, self.brightness_delta) if _coin() else 0.0
        contrast_first = _coin()
        contrast = 1.0
        if contrast_first and _coin():
            contrast = _uniform(*self.contrast_range)
        saturation = _uniform(*self.saturation_range) if _coin() else 1.0
        hue = float(torch.randint(-self.hue_delta, max(self.hue_delta, 1), ()).item()) if _coin() else 0.0
        if not contrast_first and _coin():
            contrast = _uniform(*self.contrast_range)
        return torch.tensor([beta, float(contrast_first), contrast, saturation, hue])

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # The parameters are on the CPU (as the loader delivers them): which samples get each op is decided on the
        # host, without a device sync; the values travel to the device in one non-blocking copy.
        host = params.numpy()
        beta, first, contrast, saturation, hue = (host[:, i] for i in range(5))
        values = _to_device(params.contiguous(), x.device).view(-1, 5, 1, 1, 1)
        steps = [
            (beta != 0.0, _brightness, 0),
            (first.astype(bool) & (contrast != 1.0), _contrast, 2),
            (saturation != 1.0, _scale_saturation, 3),
            (hue != 0.0, _hue_steps, 4),
            (~first.astype(bool) & (contrast != 1.0), _contrast, 2),
        ]
        for chosen, op, column in steps:
            chosen = np.flatnonzero(chosen)
            if len(chosen) == len(x):
                x = op(x, values[:, column])
            elif len(chosen):
                index = _to_device(torch.from_numpy(chosen.astype(np.int64)), x.device)
                part = op(x.index_select(0, index), values.index_select(0, index)[:, column])
                x = x.index_copy(0, index, part)
        return x


def _brightness(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return x.add(beta).clamp_(0, 255).floor_()


def _contrast(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return x.mul(alpha).clamp_(0, 255).floor_()


def _hue_steps(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return _hue(x, delta / 180.0)  # OpenCV's hue has 180 steps a turn


def _scale_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """HSV saturation x factor (clipped to 1) of RGB images with integer values 0..255; result truncated.
    Value (the max) and hue stay: the chroma becomes min(factor x chroma, value), each channel keeps its place
    between the smallest and the largest."""
    top = x.amax(dim=-3, keepdim=True)
    chroma = top - x.amin(dim=-3, keepdim=True)
    place = (x - (top - chroma)).div_(chroma.clamp(min=1.0))  # 0 at the smallest channel, 1 at the largest
    new_chroma = torch.minimum(chroma * factor, top)
    return (top - new_chroma * (1.0 - place)).floor_()


def _random_crop_box(height: int, width: int, patch_h: int, patch_w: int) -> tuple[int, int]:
    top = torch.randint(0, max(height - patch_h, 0) + 1, ()).item()
    left = torch.randint(0, max(width - patch_w, 0) + 1, ()).item()
    return top, left


def _crop_is_varied(mask: torch.Tensor) -> bool:
    """mmseg's cat_max_ratio test: more than one labelled class, the most frequent under CAT_MAX_RATIO of them."""
    counts = torch.bincount(mask.reshape(-1).long(), minlength=256)[:IGNORE_INDEX]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < CAT_MAX_RATIO


class MmsegTrainTransform:
    """(uint8 image 3xHxW, uint8 mask HxW) -> (uint8 image, uint8 mask) at the profile's patch size: the geometric
    steps 1-4. The extent of the last sample before its padding stays in `valid_hw` for `KeepPadding.draw`.
    `ratio_range`: the rescale's ratios (--scale-range); `crop_retries`: draws of a crop that fails the cat_max_ratio
    test (0: the first crop, as the original augmentation's random crop)."""

    def __init__(self, profile: Profile, ratio_range=RATIO_RANGE, crop_retries: int = CROP_RETRIES):
        self.profile = profile
        self.resize = resize(profile)
        self.valid_hw = profile.patch_hw
        self.ratio_range, self.crop_retries = tuple(ratio_range), crop_retries

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        image, mask = self.resize(image, mask)
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        height, width = image.shape[-2:]
        ratio = _uniform(*self.ratio_range)
        size = [int(height * ratio + 0.5), int(width * ratio + 0.5)]
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], size, interpolation=InterpolationMode.NEAREST)[0]

        patch_h, patch_w = self.profile.patch_hw
        top, left = _random_crop_box(*size, patch_h, patch_w)
        for _ in range(self.crop_retries):
            if _crop_is_varied(mask[top : top + patch_h, left : left + patch_w]):
                break
            top, left = _random_crop_box(*size, patch_h, patch_w)
        image = image[:, top : top + patch_h, left : left + patch_w]
        mask = mask[top : top + patch_h, left : left + patch_w]
        if _coin():
            image, mask = image.flip(-1), mask.flip(-1)

        self.valid_hw = tuple(image.shape[-2:])
        pad_h, pad_w = patch_h - image.shape[-2], patch_w - image.shape[-1]
        if pad_h > 0 or pad_w > 0:
            padded = torch.tensor(PAD_COLOUR, dtype=torch.uint8).view(3, 1, 1).repeat(1, patch_h, patch_w)
            padded[:, : image.shape[-2], : image.shape[-1]] = image
            image = padded
            mask = TF.pad(mask[None], [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)[0]
        return image.contiguous(), mask.contiguous()


class KeepPadding(PhotometricOp):
    """Sets the padded pixels (bottom rows and right columns beyond each sample's extent) back to the pad colour
    after the photometric ops. Parameters: the extent (height, width) before padding, which `draw` takes from the
    transform that just padded the sample (the dataset draws right after its transform, in the same process)."""

    num_params = 2

    def __init__(self, transform: MmsegTrainTransform):
        self.transform = transform

    def draw(self) -> torch.Tensor:
        return torch.tensor(self.transform.valid_hw, dtype=torch.float32)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if not ((params[:, 0] < height) | (params[:, 1] < width)).any():  # host tensor: no device sync
            return x
        extent = _to_device(params.contiguous(), x.device)
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        padded = (rows >= extent[:, 0].view(-1, 1, 1)) | (cols >= extent[:, 1].view(-1, 1, 1))
        colour = _to_device(torch.tensor(PAD_COLOUR, dtype=x.dtype).view(1, 3, 1, 1), x.device)
        return torch.where(padded.unsqueeze(1), colour, x)


def mmseg_pipeline(
    profile: Profile, ratio_range=RATIO_RANGE, strength: float = 1.0
) -> tuple[MmsegTrainTransform, PhotometricPipeline]:
    """mmseg's augmentation as (geometric transform for the workers, photometric ops for the device)."""
    transform = MmsegTrainTransform(profile, ratio_range)
    colour = [PhotoMetricDistortion.with_strength(strength)] if strength > 0 else []
    return transform, PhotometricPipeline([*colour, KeepPadding(transform)])


def train_pipeline(
    profile: Profile,
    augment: str = "original",
    scale_range: tuple[float, float] | None = None,
    photometric_strength: float = 1.0,
    whole_images: bool = False,
) -> tuple[v2.Transform, PhotometricPipeline]:
    """The training augmentation as (geometric transform for the workers, photometric ops for the device; a pair:
    mmseg's ops need their own transform): `augment` "original" the original's (training/data/dataset.py), "mmseg"
    mmsegmentation's (above); `scale_range` (None: the augmentation's own), `photometric_strength` and
    `whole_images` as the module's docstring says."""
    if whole_images:
        return whole_image_transform(profile), PhotometricPipeline([])
    if augment == "mmseg":
        return mmseg_pipeline(profile, scale_range or RATIO_RANGE, photometric_strength)
    colour = original_jitter(photometric_strength)
    if scale_range is None or tuple(scale_range) == (1.0, 1.0):
        return train_transform(profile), PhotometricPipeline(colour)
    transform = MmsegTrainTransform(profile, scale_range, crop_retries=0)
    return transform, PhotometricPipeline([*colour, KeepPadding(transform)])
