"""Photometric augmentation and normalisation of training batches on the training device.

The loader workers ship each training sample as uint8 (image 3xHxW, train ids HxW: 4 bytes a pixel instead of the
20 of a float image and an int64 mask) together with the random parameters of its photometric ops, drawn in the
worker under the sample's seed (`training.data.dataset.EpochSampler`) right after the flip and the crop, in the order
the original transform drew them. The training process then applies the ops to the whole batch, converts to float,
normalises and sets the memory format (`PhotometricPipeline.apply`). Validation and evaluation batches travel as uint8
too; `to_model_input` makes their model input on the device.

An op is a `PhotometricOp`: `draw()` returns its parameters for one sample as a float tensor of `num_params`
values (runs in the worker, may use torch's global RNG, which the dataset seeds), `apply(x, params)` transforms a
float batch (N,3,H,W) of integer values 0..255 with per-sample parameters (N, num_params) and returns the same kind
of batch. A pipeline concatenates its ops' parameters per sample, so another op (e.g. mmseg's photometric
distortion) plugs in by subclassing `PhotometricOp` and being listed in the pipeline.

`ColorJitterOp` is torchvision's `ColorJitter` (parameters drawn by its own `make_params`, so the same seed gives
the same jitter as before) with batched kernels that repeat torchvision's uint8 arithmetic (float32 ops, clamp and
truncation after each op) on every sample at once; the hue shift uses the closed-form HSV -> RGB formula on
max/min/chroma. Its outputs equal torchvision's but for a few pixels in 10^5 that differ by one level (float
rounding in the hue op; rarely two after a later contrast or saturation op): tests/data/test_device_augment.py checks it
sample by sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

MEAN = (0.2855, 0.3228, 0.2819)  # the original project's statistics of the Cityscapes training images
STD = (0.1831, 0.1864, 0.1837)


class PhotometricOp:
    """One photometric op: parameters drawn per sample in the worker, applied per sample to a batch on the device."""

    num_params: int = 0

    def draw(self) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ColorJitterOp(PhotometricOp):
    """torchvision's ColorJitter. Parameters: the order of the four ops (brightness 0, contrast 1, saturation 2,
    hue 3) then their factors; an op that is off gets its identity factor (1, or 0 for the hue) and is skipped."""

    num_params = 8

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        self.jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        self.enabled = [
            self.jitter.brightness is not None,
            self.jitter.contrast is not None,
            self.jitter.saturation is not None,
            self.jitter.hue is not None,
        ]

    def draw(self) -> torch.Tensor:
        params = self.jitter.make_params([])  # torchvision's own draws: randperm, then one uniform per enabled op
        factors = [params[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")]
        identity = (1.0, 1.0, 1.0, 0.0)
        return torch.tensor(
            [*params["fn_idx"].tolist(), *(identity[i] if f is None else float(f) for i, f in enumerate(factors))],
            dtype=torch.float32,
        )

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # The order is per sample. The parameters are on the CPU (as the loader delivers them), so the samples doing
        # each op at each of the four positions are found on the host without a device sync; their indices and the
        # factors travel to the device in one non-blocking copy each.
        order = params[:, :4].numpy().astype(np.int64)  # numpy: a host array, never a device tensor
        groups, flat = [], []
        for position in range(4):
            for op in range(4):
                chosen = np.flatnonzero(order[:, position] == op) if self.enabled[op] else []
                if len(chosen):
                    groups.append((op, len(flat), len(chosen)))
                    flat.extend(chosen)
        if not groups:
            return x
        index = _to_device(torch.from_numpy(np.asarray(flat, dtype=np.int64)), x.device)
        factors = _to_device(params[:, 4:].contiguous(), x.device)
        for op, start, count in groups:
            if count == len(x):
                x = _OPS[op](x, factors[:, op].view(-1, 1, 1, 1))
                continue
            chosen = index[start : start + count]
            part = _OPS[op](x.index_select(0, chosen), factors.index_select(0, chosen)[:, op].view(-1, 1, 1, 1))
            x.index_copy_(0, chosen, part)  # x is this pipeline's own float copy
        return x


def _to_device(cpu: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without waiting for the device: pinned, then a non-blocking copy."""
    if device.type == "cpu":
        return cpu
    return cpu.pin_memory().to(device, non_blocking=True)


_CONSTANTS: dict = {}


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, std (1,3,1,1) and the hue offsets (3,1,1) on `device`, copied there once."""
    if device not in _CONSTANTS:
        _CONSTANTS[device] = (
            torch.tensor(MEAN).view(1, 3, 1, 1).to(device),
            torch.tensor(STD).view(1, 3, 1, 1).to(device),
            torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1).to(device),
        )
    return _CONSTANTS[device]


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul(factor).clamp_(0, 255).floor_()


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.mean(_gray(x).floor_(), dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).floor_(), factor)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return x.mul(ratio).add_(other * (1.0 - ratio)).clamp_(0, 255).floor_()


def _hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images with integer values 0..255 (float32) by `hue` turns; result truncated."""
    hue = hue.view(-1, 1, 1)
    r, g, b = x.unbind(dim=-3)
    top = torch.maximum(torch.maximum(r, g), b)
    chroma = top - torch.minimum(torch.minimum(r, g), b)
    # 0 at the smallest channel, exactly 1 at the largest
    a = (x - (top - chroma).unsqueeze(-3)).div_(chroma.clamp(min=1.0).unsqueeze(-3))
    ar, ag, ab = a.unbind(dim=-3)
    is_r = ar.floor()  # which channel is the largest (ties: r, then g, then b)
    is_g = ag.floor().mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    sixths = (ag - ab).mul_(is_r) + (ab - ar).add_(2.0).mul_(is_g) + (ar - ag).add_(4.0).mul_(is_b)
    k = sixths.add_(6.0 * hue).unsqueeze(-3) + _constants(x.device)[2]  # k = n + hue (in sixths) for R, G, B
    k.sub_(k.mul(1.0 / 6.0).floor_().mul_(6.0))  # k mod 6
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    # torchvision's float -> uint8 rounding
    return weight.mul_(-chroma.unsqueeze(-3)).add_(top.unsqueeze(-3)).mul_(255.999 / 255.0).floor_()


_OPS = (_brightness, _contrast, _saturation, _hue)


class PhotometricPipeline:
    """Photometric ops applied in sequence, then float conversion, normalisation and the memory format."""

    def __init__(self, ops: list[PhotometricOp]):
        self.ops = list(ops)
        self.num_params = sum(op.num_params for op in self.ops)

    def draw(self) -> torch.Tensor:
        """Every op's parameters for one sample (in the worker, under the sample's seed)."""
        if not self.ops:
            return torch.zeros(0)
        return torch.cat([op.draw() for op in self.ops])

    def augment(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) images and their (N, num_params) parameters -> augmented float32 images, values 0..255."""
        if images.device.type == "cpu" and len(images) > 1:
            # On a CPU one sample's float image stays in the cache through the ~30 passes of the ops; a whole batch
            # streams through memory on every pass, measured 5x slower per sample (docs/measurements.md,
            # row data-jitter-cpu).
            return torch.cat([self.augment_batch(images[i : i + 1], params[i : i + 1]) for i in range(len(images))])
        return self.augment_batch(images, params)

    def augment_batch(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """`augment` on the whole batch at once (the GPU's way)."""
        x = images.float()
        start = 0
        for op in self.ops:
            x = op.apply(x, params[:, start : start + op.num_params])
            start += op.num_params
        return x

    def apply(
        self,
        images: torch.Tensor,
        params: torch.Tensor | None,
        memory_format=torch.contiguous_format,
        augment: bool = True,
    ) -> torch.Tensor:
        """The model's input: augmented (unless `augment` is False: done already in the workers), scaled to 0..1,
        normalised with the data set's mean and std, in `memory_format`."""
        x = self.augment(images, params) if augment and self.ops else images.float()
        return normalize(x).contiguous(memory_format=memory_format)


def to_model_input(images, device: torch.device | str, memory_format=torch.contiguous_format):
    """uint8 images (N,3,H,W), as the validation and evaluation loaders ship them (or a tuple of such views, TTA),
    -> the model's input on `device`: scaled to 0..1, normalised with the data set's mean and std, in `memory_format`.

    The arithmetic is torchvision's `ToDtype(float32, scale=True)` then `Normalize` (a product with 1/255, where
    `normalize` divides): the workers ran those before, and the scores stay what they were, bit for bit. Float images
    are taken as the model's input already (moved only)."""
    if isinstance(images, (tuple, list)):
        return tuple(to_model_input(view, device, memory_format) for view in images)
    x = images.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        mean, std, _ = _constants(x.device)
        x = x.float().mul_(1.0 / 255).sub_(mean).div_(std)
    return x.contiguous(memory_format=memory_format)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images with values 0..255 -> (x / 255 - mean) / std, as `ToDtype(scale=True)` then `Normalize`."""
    mean, std, _ = _constants(x.device)
    return x.div(255.0).sub_(mean).div_(std)


def original_jitter(strength: float = 1.0) -> list[PhotometricOp]:
    """The original project's colour jitter (brightness, contrast, saturation 0.3, hue 0.1), its ranges multiplied
    by `strength` (--photometric-strength; 0: no op)."""
    if strength == 0:
        return []
    return [
        ColorJitterOp(brightness=0.3 * strength, contrast=0.3 * strength, saturation=0.3 * strength, hue=0.1 * strength)
    ]


def original_photometric(strength: float = 1.0) -> PhotometricPipeline:
    """The original project's colour jitter as a pipeline."""
    return PhotometricPipeline(original_jitter(strength))


def apply_in_worker(pipeline: PhotometricPipeline, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """One sample's photometric ops in a loader worker (CPU-only runs): uint8 3xHxW in, uint8 out."""
    return pipeline.augment(image[None], params[None])[0].to(torch.uint8)
