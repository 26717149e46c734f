"""The graph rewrites that make the eager deploy form fast on a CPU: what ONNX Runtime does, done in PyTorch.

ONNX Runtime (CPU) runs Fast-SCNN's convolutions with their bias, ReLU and residual add fused into one kernel and
spends a third of its time on the final x8 bilinear upsampling of the logits (measured with its profiler: see
docs/efficiency.md). The eager PyTorch form ran each ReLU and add as a pass of its own over the feature map, and
its upsampling kernel computes a source index and four weights per output pixel (per channel in channels_last).
`rewrite_for_cpu` traces a network with torch.fx and

- replaces each Conv2d followed by a ReLU, or by an add (and a ReLU after it), by one oneDNN convolution with those
  operations fused (`torch.ops.mkldnn._convolution_pointwise`, the kernels inductor's freezing uses), its weights
  reordered once into oneDNN's blocked layout ("prepacked") at the first call;
- replaces each bilinear upsampling by an integer factor (align_corners=False) by `bilinear_upsample`, which
  writes the same values in two passes of plain multiply-adds (phase decomposition: with an integer factor s every
  output pixel is one of s fixed mixtures of two neighbours, per axis).

Results equal the plain network's up to float rounding (same operations, another order: ~1e-6 relative); the
argmax agreement is checked by whoever builds the form (deploy.agreement). Networks that torch.fx cannot trace are
left as they are (`rewrite_for_cpu` says why).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------- upsampling


def _integer_factor(size_in: int, size_out: int) -> int | None:
    return size_out // size_in if size_out >= size_in and size_out % size_in == 0 else None


def _output_size(x: torch.Tensor, size, scale_factor) -> tuple[int, int] | None:
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (int(size[0]), int(size[1])) if len(size) == 2 else None
    if scale_factor is None:
        return None
    scales = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    if len(scales) != 2 or any(float(s) != int(s) for s in scales):
        return None
    return x.shape[-2] * int(scales[0]), x.shape[-1] * int(scales[1])


def _phase_weights(factor: int, dtype: torch.dtype, device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """For output pixel s*i + p, the source position is i + (p + 0.5)/s - 0.5: phases p < s/2 mix pixels i-1 and i,
    the others i and i+1. Returns (first phase of the second kind, weights of i for the first kind, of i+1 for the
    second)."""
    offsets = (torch.arange(factor, dtype=torch.float64) + 0.5) / factor - 0.5
    split = int((offsets < 0).sum())
    return split, (1 + offsets[:split]).to(dtype).to(device), offsets[split:].to(dtype).to(device)


def _upsample_dim(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """`x` (contiguous) upsampled `factor` times along `dim`: linear, half-pixel centres, the source clamped at the
    edges as PyTorch's bilinear mode does. Output element s*i + p of `dim` is written at (i, p): broadcast lerps
    whose innermost runs are everything after `dim` (whole rows for the last upsampled axis)."""
    if factor == 1:
        return x
    n = x.shape[dim]
    split, before, after = _phase_weights(factor, x.dtype, x.device)
    trailing = (1,) * (x.dim() - dim - 1)
    out = torch.empty(*x.shape[: dim + 1], factor, *x.shape[dim + 1 :], dtype=x.dtype, device=x.device)

    def pixels(start: int, count: int) -> torch.Tensor:
        return x.narrow(dim, start, count).unsqueeze(dim + 1)

    def phases(start: int, count: int, first: int, number: int) -> torch.Tensor:
        return out.narrow(dim, start, count).narrow(dim + 1, first, number)

    if split:  # phases between pixel i-1 and i; at i = 0 the source clamps to pixel 0
        torch.lerp(pixels(0, n - 1), pixels(1, n - 1), before.view(split, *trailing), out=phases(1, n - 1, 0, split))
        phases(0, 1, 0, split).copy_(pixels(0, 1).expand_as(phases(0, 1, 0, split)))
    rest = factor - split  # phases between pixel i and i+1; at the last pixel the source clamps to it
    torch.lerp(pixels(0, n - 1), pixels(1, n - 1), after.view(rest, *trailing), out=phases(0, n - 1, split, rest))
    phases(n - 1, 1, split, rest).copy_(pixels(n - 1, 1).expand_as(phases(n - 1, 1, split, rest)))
    return out.flatten(dim, dim + 1)


def bilinear_upsample(
    input: torch.Tensor,
    size=None,
    scale_factor=None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> torch.Tensor:
    """`F.interpolate` (same arguments), computed by phases where it is a bilinear upsampling of a 4-d tensor by an
    integer factor per axis with align_corners=False; anything else goes to F.interpolate itself.

    The result has the input's dtype and memory layout (NCHW, or channels_last), as F.interpolate's (on the CPU,
    autocast leaves both alone).
    """
    target = _output_size(input, size, scale_factor) if input.dim() == 4 else None
    factors = (
        (_integer_factor(input.shape[-2], target[0]), _integer_factor(input.shape[-1], target[1])) if target else None
    )
    if mode != "bilinear" or align_corners or antialias or not factors or None in factors or input.numel() == 0:
        return F.interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
    x = input
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():  # NHWC in memory: stays so
        y = _upsample_dim(_upsample_dim(x.permute(0, 2, 3, 1), 2, factors[1]), 1, factors[0])
        return y.permute(0, 3, 1, 2)
    return _upsample_dim(_upsample_dim(x.contiguous(), 3, factors[1]), 2, factors[0])


# ----------------------------------------------------------------------------------------- fused convolutions


def onednn_fusion_available() -> bool:
    """Whether this torch has oneDNN's fused convolution kernels (x86 and aarch64 builds with mkldnn)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and ops is not None and ops._convolution_pointwise)
    except (AttributeError, RuntimeError):
        return False


class FusedConv2d(nn.Module):
    """A Conv2d with the ReLU after it, or the add (and ReLU) after it, in one oneDNN kernel.

    forward(x) or forward(x, other): conv(x) [+ other] [then ReLU]. Inputs in channels_last. The weights are
    reordered into oneDNN's layout at the first call (the reorder is chosen for that input's size; other sizes
    still compute correctly). An `other` of another shape than the convolution's output is added unfused.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, add: bool = False):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.kernel_size = conv.kernel_size
        self.relu, self.add = relu, add
        self._packed: torch.Tensor | None = None  # oneDNN-blocked weights: opaque, so not a buffer (not copyable)

    def extra_repr(self) -> str:
        fused = ["conv"] + (["add"] if self.add else []) + (["relu"] if self.relu else [])
        return f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, " + (
            f"stride={tuple(self.stride)}, groups={self.groups}, fused={'+'.join(fused)}"
        )

    def _weights(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or self._packed.dtype != x.dtype:
            args = (self.padding, self.stride, self.dilation, self.groups)
            self._packed = torch.ops.mkldnn._reorder_convolution_weight(self.weight.to(x.dtype), *args, list(x.shape))
        return self._packed

    def _output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        spatial = [
            (size + 2 * pad - dil * (k - 1) - 1) // step + 1
            for size, pad, dil, k, step in zip(x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride)
        ]
        return (x.shape[0], self.weight.shape[0], *spatial)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        weight, bias = self._weights(x), None if self.bias is None else self.bias.to(x.dtype)
        args = (self.padding, self.stride, self.dilation, self.groups)
        unary = "relu" if self.relu else "none"
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, unary, [], "")
        if tuple(other.shape) != self._output_shape(x) or other.dtype != x.dtype:
            out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "none", [], "") + other
            return out.relu_() if self.relu else out
        other = other.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, bias, *args, "add", None, unary if self.relu else None, [], ""
        )


# ----------------------------------------------------------------------------------------------- the rewrite

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, torch.add}


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    return (
        isinstance(_module(gm, node), nn.ReLU)
        or (node.op == "call_function" and node.target in _RELU_FUNCTIONS and len(node.args) == 1)
        or (node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1)
    )


def _is_plain_add(node: torch.fx.Node) -> bool:
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    return (
        node.op == "call_function"
        and node.target in _ADD_FUNCTIONS
        and not node.kwargs
        and len(node.args) == 2 == len(tensors)
    )


def onednn_dtypes() -> set[torch.dtype]:
    """The weight dtypes oneDNN computes natively here (reduced precision only where the CPU has it)."""
    if not onednn_fusion_available():
        return set()
    dtypes = {torch.float32}
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    for dtype, check in checks.items():
        supported = getattr(torch.ops.mkldnn, check, None)
        if supported is not None and supported():
            dtypes.add(dtype)
    return dtypes


def _fusable(conv: nn.Module, dtypes: set[torch.dtype]) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.device.type == "cpu"
        and conv.weight.dtype in dtypes
    )


def _drop_identities(gm: torch.fx.GraphModule) -> None:
    """Identity (where BatchNorm was folded) and Dropout (eval) pass their input on: remove them from the graph."""
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), (nn.Identity, nn.Dropout)) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _fuse_convolutions(gm: torch.fx.GraphModule) -> list[FusedConv2d]:
    """Every fusable Conv2d becomes a FusedConv2d; one whose only user is a ReLU, or an add (and a ReLU after it),
    takes that operation in. Returns the new modules."""
    converted, dtypes = [], onednn_dtypes()
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if conv is None or not _fusable(conv, dtypes) or node.kwargs or len(node.args) != 1:
            continue
        user = next(iter(node.users)) if len(node.users) == 1 else None
        dead, other = [], None
        if user is not None and _is_plain_add(user) and user.args.count(node) == 1:
            other = next(a for a in user.args if a is not node)
            after = next(iter(user.users)) if len(user.users) == 1 else None
            dead = [after, user] if after is not None and _is_relu(gm, after) else [user]
        elif user is not None and _is_relu(gm, user):
            dead = [user]
        parent, _, name = node.target.rpartition(".")
        fused = FusedConv2d(conv, relu=bool(dead) and _is_relu(gm, dead[0]), add=other is not None)
        setattr(gm.get_submodule(parent), name, fused)
        if other is not None:
            user.prepend(node)  # the add comes after both of its operands: so does the fused conv, moved there
            node.args = (node.args[0], other)
        if dead:
            dead[0].replace_all_uses_with(node)
            for finished in dead:
                gm.graph.erase_node(finished)
        converted.append(fused)
    return converted


def _route_upsampling(gm: torch.fx.GraphModule) -> int:
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is F.interpolate:
            mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
            if mode == "bilinear":
                node.target = bilinear_upsample
                count += 1
    return count


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaves) or super().is_leaf_module(module, qualified_name)


def rewrite_for_cpu(net: nn.Module, fuse: bool = True, leaves: tuple[type, ...] = ()) -> tuple[nn.Module, str]:
    """`net` (eval mode, BatchNorm folded) traced and rewritten as the module docstring says; and what was done.

    `fuse`: fuse convolutions (on the CPU, oneDNN available; fp32 weights, or reduced-precision ones where the CPU
    computes them natively; not for a network run under autocast, which would not reach the fused kernels).
    Bilinear upsamplings are always routed to `bilinear_upsample`. Modules of the types in `leaves` are kept whole
    (not traced into: e.g. one that runs its part under autocast). Where torch.fx cannot trace `net` it is returned
    unchanged, with the reason.
    """
    try:
        tracer = _Tracer(leaves)
        gm = torch.fx.GraphModule(net, tracer.trace(net), type(net).__name__)
    except Exception as error:  # data-dependent control flow and the like: keep the network as it is
        return net, f"not rewritten (torch.fx could not trace it: {type(error).__name__})"
    _drop_identities(gm)
    convs = _fuse_convolutions(gm) if fuse and onednn_fusion_available() else []
    upsamplings = _route_upsampling(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # the ReLUs and Identities taken in
    relu, add = sum(conv.relu for conv in convs), sum(conv.add for conv in convs)
    done = [f"{len(convs)} convolutions on oneDNN ({relu} with their ReLU, {add} with an add fused)"] if convs else []
    done += [f"{upsamplings} bilinear upsamplings by phases"] if upsamplings else []
    return gm, ", ".join(done) or "nothing to rewrite"
