"""Unit tests for the Fast-SCNN model in fast_scnn.py (CPU, small inputs)."""

import os
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fast_scnn import Model, PyramidPooling  # noqa: E402


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_parameter_count_in_paper_range():
    count = n_params(Model(n_classes=19))
    assert 1.11e6 <= count <= 1.14e6, count


def test_n_classes_honoured():
    model = Model(n_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 160))
    assert out.shape == (2, 5, 96, 160)
    # Only the final 1x1 conv depends on the class count: 128 * k + k.
    assert n_params(Model(n_classes=19)) - n_params(model) == 14 * 129


def test_in_channels_honoured():
    model = Model(in_channels=1, n_classes=19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 96))
    assert out.shape == (1, 19, 64, 96)
    # First conv is 3x3 with 32 filters: 2 fewer input channels.
    assert n_params(Model(in_channels=3)) - n_params(model) == 2 * 32 * 9


@pytest.mark.parametrize("h,w", [(97, 131), (50, 70), (64, 64)])
def test_odd_input_sizes_give_input_resolution(h, w):
    model = Model(n_classes=19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 19, h, w)


def test_aux_heads_only_in_training_with_aux():
    x = torch.randn(2, 3, 96, 160)
    model = Model(n_classes=7, aux=True)
    model.train()
    outs = model(x)
    assert isinstance(outs, tuple) and len(outs) == 3
    for o in outs:
        assert o.shape == (2, 7, 96, 160)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, 96, 160)

    plain = Model(n_classes=7, aux=False).train()
    out = plain(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, 96, 160)


def test_state_dict_round_trip(tmp_path):
    model = Model(n_classes=19, aux=True)
    # One training step's worth of BN statistics so buffers are non-trivial.
    model.train()
    model(torch.randn(2, 3, 96, 160))
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)

    torch.manual_seed(123)
    fresh = Model(n_classes=19, aux=True)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    fresh.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_pyramid_pooling_branches_registered():
    model = Model()
    modules = list(model.modules())
    ppms = [m for m in modules if isinstance(m, PyramidPooling)]
    assert len(ppms) == 1
    ppm = ppms[0]
    assert isinstance(ppm.branches, nn.ModuleList) and len(ppm.branches) == 4
    ids = {id(m) for m in modules}
    pools = [m for m in modules if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert sorted(p.output_size for p in pools) == [1, 2, 3, 6]
    for branch in ppm.branches:
        assert id(branch) in ids
    # The branch weights are part of the saved state.
    assert any("pyramid_pooling.branches" in k for k in model.state_dict())


def test_gradient_reaches_first_conv():
    model = Model(n_classes=4).train()
    out = model(torch.randn(2, 3, 64, 96))
    out.mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 3
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


def test_every_batchnorm_follows_a_conv_in_a_sequential():
    model = Model(aux=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    seen = 0
    for m in model.modules():
        if not isinstance(m, nn.Sequential):
            continue
        children = list(m.children())
        for i, child in enumerate(children):
            if isinstance(child, nn.BatchNorm2d):
                assert i > 0 and isinstance(children[i - 1], nn.Conv2d)
                assert children[i - 1].out_channels == child.num_features
                seen += 1
    assert n_bn > 0 and seen == n_bn
