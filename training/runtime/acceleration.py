"""How a stage runs fast on its device: the mixed-precision dtype, torch.compile and the distillation teacher's form."""

from __future__ import annotations

import torch
from torch import nn


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """--amp's dtype: bf16 where the GPU computes it natively (compute capability >= 8: A100, H100, RTX 30xx),
    else fp16 with loss scaling (V100, T4, RTX 20xx: `torch.cuda.is_bf16_supported()` alone also counts GPUs
    that only emulate bf16, slowly). None on the CPU (the stage trains in fp32 there)."""
    if device.type != "cuda":
        return None
    native = torch.cuda.get_device_capability(device)[0] >= 8
    try:
        native = native or torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument: the capability decides
        pass
    return torch.bfloat16 if native else torch.float16


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile for training (--compile). The compiled wrapper shares the module's parameters, so the
    optimizer, state_dict (saved from the plain module), resume and DDP (compile the DDP wrapper) are unchanged."""
    return torch.compile(model)


def prepare_teacher(
    teacher: nn.Module, device: torch.device, memory_format: torch.memory_format, dtype: torch.dtype | None
) -> nn.Module:
    """The frozen teacher in the student's memory format and, under --amp, pre-cast to the autocast dtype: its
    weights are then not cast again at every step (autocast caches casts only for weights that require grad)."""
    teacher.to(device, memory_format=memory_format)
    if dtype is not None:
        teacher.to(dtype)
        # its input in the same dtype: layers that autocast leaves alone then meet matching weights
        teacher.register_forward_pre_hook(lambda _module, inputs: tuple(x.to(dtype) for x in inputs))
    return teacher
