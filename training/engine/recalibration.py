"""BatchNorm recalibration (--bn-recalibrate N): the running statistics of every BatchNorm layer re-estimated from
N batches at the stage's input size, by forward passes in train mode without gradients (FixRes, Touvron et al. 2019:
a network trained on crops sees other statistics on whole test-size images; Fast-SCNN's pyramid pooling averages
over the whole feature map, so its statistics depend on the input size).

The statistics are reset and then averaged over the N batches with equal weights (momentum None: a cumulative
average), not blended into the old ones; each layer's momentum is put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, inputs: Iterable[torch.Tensor], autocast: Callable | None = None, expected: int | None = None
) -> int:
    """Re-estimate `model`'s BatchNorm statistics from the batches `inputs` yields (model inputs on its device);
    returns the number of batches used. No batch, or fewer than `expected` (a pass cut short, e.g. by a stop
    signal: the state saved then must hold the statistics the stage started from), leaves the statistics as they
    were. `autocast`: a context factory for the forward passes (the stage's precision)."""
    layers = batchnorm_layers(model)
    saved = [
        (layer.momentum, layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
        for layer in layers
    ]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches
    was_training, count = model.training, 0
    model.train()
    try:
        for images in inputs:
            if autocast is None:
                model(images)
            else:
                with autocast():
                    model(images)
            count += 1
    finally:
        model.train(was_training)
        for layer, (momentum, mean, var, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if count == 0 or (expected is not None and count < expected):
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(tracked)
    return count
