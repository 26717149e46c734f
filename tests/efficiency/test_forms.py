"""The CPU rewrites of the deploy form (training/efficiency/forms.py): same results as the plain network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fast_scnn
from training.efficiency import deploy, forms

needs_onednn = pytest.mark.skipif(not forms.onednn_fusion_available(), reason="this torch has no oneDNN kernels")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs


@pytest.mark.parametrize(
    "shape, size",
    [
        ((1, 19, 16, 32), (128, 256)),  # x8: the logits of Fast-SCNN
        ((2, 5, 7, 9), (21, 18)),  # odd factor on H (3, a phase exactly on the pixel), 2 on W, batch 2
        ((1, 3, 1, 4), (5, 12)),  # one row: every output row is the edge
        ((1, 2, 6, 6), (6, 30)),  # factor 1 on H
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_bilinear_upsample_equals_interpolate(shape, size, channels_last):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    got = forms.bilinear_upsample(x, size=size, mode="bilinear", align_corners=False)
    assert got.shape == expected.shape and got.stride() == expected.stride()  # the same layout too
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_bilinear_upsample_by_scale_factor_and_its_edges_by_hand():
    x = torch.tensor([[[[0.0, 8.0]]]])  # one row, two pixels, x4 along W
    got = forms.bilinear_upsample(x, scale_factor=(1, 4), mode="bilinear")
    # source positions (j + 0.5) / 4 - 0.5, clamped to [0, 1]: 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1
    assert got.flatten().tolist() == [0.0, 0.0, 1.0, 3.0, 5.0, 7.0, 8.0, 8.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(10, 15), mode="bilinear"),  # not an integer factor
        dict(size=(12, 16), mode="bilinear", align_corners=True),
        dict(size=(12, 16), mode="nearest"),
        dict(scale_factor=1.5, mode="bilinear"),
    ],
)
def test_anything_else_is_left_to_interpolate(kwargs):
    x = torch.randn(1, 3, 6, 8)
    assert torch.equal(forms.bilinear_upsample(x, **kwargs), F.interpolate(x, **kwargs))


def test_reduced_precision_stays_reduced_as_interpolate_under_cpu_autocast():
    x = torch.randn(1, 4, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.interpolate(x, scale_factor=4, mode="bilinear")
        got = forms.bilinear_upsample(x, scale_factor=4, mode="bilinear")
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-7, atol=2**-7)  # one bf16 rounding apart


def folded_fast_scnn() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = fast_scnn.Model().eval()
    for module in model.modules():  # statistics far from (0, 1): a wrong fusion would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    net = copy.deepcopy(model)
    deploy.fold_batchnorm(net)
    return model, net.to(memory_format=torch.channels_last)


@needs_onednn
def test_fast_scnn_rewritten_computes_what_the_plain_model_does():
    model, net = folded_fast_scnn()
    rewritten, what = forms.rewrite_for_cpu(net)
    # 44 conv+BN pairs and the classifier's conv; ReLUs after 34 of them; 6 residual adds + the fusion's add
    assert (
        what == "45 convolutions on oneDNN (34 with their ReLU, 7 with an add fused), 6 bilinear upsamplings by phases"
    )
    assert not any(isinstance(m, (nn.Conv2d, nn.ReLU)) for m in rewritten.modules())
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        expected, got = model(x), rewritten(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    with torch.no_grad():  # another input size than the first call's (the weights were reordered for that one)
        x = torch.randn(1, 3, 96, 160)
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-4, atol=1e-4 * float(model(x).abs().max()))


class AddsAfter(nn.Module):
    """A conv whose add partner is computed after it, a conv used twice, and a broadcast add."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.c, self.d = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x):
        first = self.a(x)
        later = torch.relu(self.b(x) * 2)
        y = torch.relu(first + later)  # `later` is computed after `first`'s conv: fused, the conv moves down
        z = self.c(y)  # two users: not fused
        return self.d(z) + self.bias, z * 3  # fused in the graph; the shapes differ, so added after the conv


@needs_onednn
def test_adds_are_fused_only_where_the_shapes_allow_and_the_order_stays_valid():
    model = AddsAfter().eval()
    rewritten, what = forms.rewrite_for_cpu(model)
    assert what == "4 convolutions on oneDNN (1 with their ReLU, 2 with an add fused)"
    x = torch.randn(2, 3, 10, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for got, expected in zip(rewritten(x), model(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it


def test_a_network_fx_cannot_trace_is_left_as_it_is():
    model = Branchy()
    rewritten, what = forms.rewrite_for_cpu(model)
    assert rewritten is model and what.startswith("not rewritten (torch.fx could not trace it")


@needs_onednn
def test_the_fp32_deploy_form_is_rewritten_and_agrees():
    model, _ = folded_fast_scnn()
    form = deploy.DeployForm(model, torch.device("cpu"), torch.float32)
    assert "45 convolutions on oneDNN" in form.describe() and "6 bilinear upsamplings" in form.describe()
    plain_form = deploy.DeployForm(model, torch.device("cpu"), torch.float32, rewrite=False)
    assert "oneDNN" not in plain_form.describe()
    x = torch.randn(1, 3, 128, 256)
    assert deploy.agreement(model, form, [x]) >= 0.999


def test_the_mixed_form_reduces_its_context_branch_only():
    model, _ = folded_fast_scnn()
    form = deploy.DeployForm(model, torch.device("cpu"), torch.bfloat16, scope="context")
    wrapped = [m for m in form.net.modules() if isinstance(m, deploy.ReducedPrecision)]
    assert len(wrapped) == 1  # not traced into: its cast (or autocast region) is intact
    seen = {}
    for name in ("learning_to_downsample.conv.0", "global_feature_extractor.module.bottlenecks.0.0.expand.0"):
        form.net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.dtype}))
    with torch.no_grad():
        out = form(form.prepare(torch.randn(1, 3, 64, 128)))
    assert seen == {
        "learning_to_downsample.conv.0": torch.float32,
        "global_feature_extractor.module.bottlenecks.0.0.expand.0": torch.bfloat16,
    }
    assert out.dtype == torch.float32


@needs_onednn
@pytest.mark.skipif(torch.bfloat16 not in forms.onednn_dtypes(), reason="no native bf16 on this CPU")
def test_where_the_cpu_has_bf16_the_weights_are_bf16_and_fused():
    model, _ = folded_fast_scnn()
    form = deploy.DeployForm(model, torch.device("cpu"), torch.bfloat16)
    assert form.cast_weights and "bf16 weights" in form.describe() and "45 convolutions on oneDNN" in form.describe()
    assert all(p.dtype == torch.bfloat16 for p in form.net.buffers() if p.is_floating_point())
    mixed = deploy.DeployForm(model, torch.device("cpu"), torch.bfloat16, scope="context")
    # the fp32 part outside, the context branch's own convolutions inside, each fused
    assert "13 convolutions on oneDNN" in mixed.describe() and "in global_feature_extractor: 32 convolutions" in (
        mixed.describe()
    )
    compiled = deploy.DeployForm(model, torch.device("cpu"), torch.bfloat16, compile=True)
    assert not compiled.cast_weights and "bf16 autocast" in compiled.describe()  # inductor fuses under autocast
