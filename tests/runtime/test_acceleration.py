"""training/runtime/acceleration.py: --amp's dtype choice (native bf16 only), the teacher's form, and the distillation
loss module that owns the teacher the stage prepares (issue 14)."""

from __future__ import annotations

import argparse

import torch

import train_distillation
from fast_scnn import Model
from training.losses import DistillationLoss
from training.models.build import FrozenTeacher
from training.runtime import acceleration
from training.runtime.acceleration import amp_dtype, prepare_teacher


def test_amp_uses_bf16_only_where_the_gpu_has_it_natively(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert amp_dtype(torch.device("cpu")) is None
    for capability, native, expected in [
        ((8, 0), True, torch.bfloat16),
        ((9, 0), True, torch.bfloat16),
        ((7, 5), False, torch.float16),
        ((7, 0), False, torch.float16),
    ]:
        monkeypatch.setattr(acceleration.torch.cuda, "get_device_capability", lambda device, c=capability: c)
        # a T4 (7.5) "supports" bf16 by emulation: is_bf16_supported() alone says True there
        monkeypatch.setattr(
            acceleration.torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True, n=native: True if including_emulation else n,
        )
        assert amp_dtype(cuda) == expected, capability


def test_teacher_is_channels_last_and_pre_cast():
    torch.manual_seed(0)
    teacher = FrozenTeacher(Model())
    reference = FrozenTeacher(Model())
    reference.load_state_dict(teacher.state_dict())
    prepare_teacher(teacher, torch.device("cpu"), torch.channels_last, torch.bfloat16)
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 128)
    out = teacher(x)  # an fp32 input is cast by the teacher itself
    assert out.dtype == torch.bfloat16
    agree = (out.float().argmax(1) == reference(x).argmax(1)).float().mean()
    assert agree > 0.9


def test_distillation_loss_owns_its_teacher(tmp_path):
    torch.save(Model().state_dict(), tmp_path / "teacher.pth")
    args = argparse.Namespace(
        teacher_arch="fast_scnn",
        trained_teacher_model_path=str(tmp_path / "teacher.pth"),
        temperature=4.0,
        alpha=0.5,
        kd_loss="kl",
    )
    loss = train_distillation.make_loss(args, torch.device("cpu"))
    # a declared part of the loss module (what the stage prepares), not an attribute of a closure
    assert isinstance(loss, DistillationLoss) and isinstance(loss.teacher, FrozenTeacher)
    assert dict(loss.named_children()) == {"teacher": loss.teacher}
    assert not any(p.requires_grad for p in loss.parameters())
