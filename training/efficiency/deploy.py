"""The inference form of a trained model, and its ONNX export: what evaluate_efficiency.py times and checks.

- BatchNorm folded into the preceding Conv2d (`fold_batchnorm`).
- `DeployForm`: folded, channels_last, reduced precision (bf16 autocast on CPUs with native bf16 instructions, fp16
  weights and inputs on CUDA; or only in the low-resolution context branch: "mixed"), on the CPU fused convolutions
  and a faster upsampling (efficiency/forms.py), optionally `torch.compile` with frozen weights;
  `choose_deploy_dtype` picks the precision a device starts from, and efficiency/measure.py steps it down (mixed,
  then fp32) while `agreement` with the plain model stays below its threshold.
- `export_onnx`: the folded fp32 network at one static input size, with the dynamo exporter (see its docstring).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn

from training.efficiency.forms import onednn_dtypes, rewrite_for_cpu
from training.errors import UserError


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an nn.Sequential into that conv (in place).

    The BatchNorm is replaced by nn.Identity, so module names and the Sequential's indices stay as they were.
    Needs eval mode (running statistics). Returns the number of folded pairs.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                module._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


DEPLOY_CHOICES = ("auto", "fp32", "bf16", "fp16", "mixed-bf16", "mixed-fp16")


def choose_deploy_dtype(device: torch.device, choice: str = "auto") -> tuple[torch.dtype, str, str]:
    """The deploy form's dtype, its scope ("all", or "context": mixed-*) and why.

    auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; evaluate_model then steps down from there.
    """
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if choice != "auto":
        return (
            names[choice.removeprefix("mixed-")],
            "context" if choice.startswith("mixed-") else "all",
            f"{choice} (--deploy-dtype)",
        )
    if device.type == "cuda":
        return torch.float16, "all", "fp16 (CUDA)"
    if native_bf16_cpu():
        return torch.bfloat16, "all", "bf16 autocast (CPU has native bf16: AVX512-BF16/AMX)"
    return torch.float32, "all", "fp32 (CPU without native bf16; bf16 would be emulated and slower)"


# Where a model keeps its low-resolution context branch: the part of the network whose reduced precision changes the
# fewest predictions (its errors reach the logits only through the fusion at 1/8 resolution) while it does a large
# share of the arithmetic (about half of Fast-SCNN's). Checked in order; models without one skip the mixed rung.
CONTEXT_BRANCHES = ("global_feature_extractor", "net.backbone")


def context_branch(model: nn.Module) -> str | None:
    """The qualified name of `model`'s context branch (see CONTEXT_BRANCHES), or None."""
    names = dict(model.named_modules())
    return next((name for name in CONTEXT_BRANCHES if name in names), None)


def _as_float(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, dict):
        return type(out)((key, _as_float(value)) for key, value in out.items())
    return type(out)(_as_float(value) for value in out) if isinstance(out, (tuple, list)) else out


class ReducedPrecision(nn.Module):
    """Runs `module` in `dtype` and hands fp32 on: autocast, or (`cast_weights`, CUDA fp16) its own weights cast."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str, cast_weights: bool):
        super().__init__()
        self.module = module.to(dtype) if cast_weights else module
        self.dtype, self.device_type, self.cast_weights = dtype, device_type, cast_weights

    def forward(self, *inputs):
        if self.cast_weights:
            return _as_float(self.module(*(x.to(self.dtype) for x in inputs)))
        with torch.autocast(self.device_type, dtype=self.dtype):
            return _as_float(self.module(*inputs))


class DeployForm(nn.Module):
    """The inference form of a model: BN folded, channels_last, reduced precision, optionally compiled.

    `scope` says where `dtype` applies: "all" of the network (its logits come out in `dtype`), or only its
    "context" branch (see CONTEXT_BRANCHES), the rest staying fp32. Inputs are expected in channels_last (a decoded
    HxWxC image permuted to CxHxW already is). On the CPU, uncompiled, the network is rewritten (`rewrite`,
    efficiency/forms.py): convolutions on oneDNN fused with their ReLU/add, bilinear upsamplings by integer factors
    computed by phases; compiled, inductor's freezing does the fusing. Reduced precision: on CUDA the weights
    themselves are fp16; on the CPU, rewritten, the weights are bf16/fp16 where oneDNN computes that dtype natively
    (AVX512-BF16/AMX, AVX512-FP16); otherwise (compiled, or no native support) it runs under autocast (weights stay
    fp32, convolutions run in the reduced dtype).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        scope: str = "all",
        rewrite: bool = True,
    ):
        super().__init__()
        net = copy.deepcopy(model).eval()
        self.folded = fold_batchnorm(net)
        self.device, self.dtype = device, dtype
        self.scope = "all" if dtype == torch.float32 else scope
        self.context = context_branch(net) if self.scope == "context" else None
        if self.scope == "context" and self.context is None:
            raise ValueError(f"{type(model).__name__} has no context branch (one of {', '.join(CONTEXT_BRANCHES)})")
        rewrite = rewrite and device.type == "cpu" and not compile
        # reduced precision in the weights themselves: fp16 on CUDA; on the CPU where the rewrite's fused oneDNN
        # kernels compute the dtype natively (autocast would not reach them); autocast otherwise
        self.cast_weights = dtype != torch.float32 and (device.type == "cuda" or (rewrite and dtype in onednn_dtypes()))
        net = net.to(device=device, memory_format=torch.channels_last)
        if self.context:
            parent, _, name = self.context.rpartition(".")
            owner = net.get_submodule(parent)
            setattr(owner, name, ReducedPrecision(getattr(owner, name), dtype, device.type, self.cast_weights))
        self.net = net.to(dtype) if self.half_weights else net
        self.rewritten = self._rewrite() if rewrite else ""
        self.compiled = self._first_call_done = False
        if compile:
            # a static graph per input shape (a second shape would otherwise turn it into a slower dynamic one); on
            # CUDA the compiled graph is replayed as a CUDA graph (what mode="reduce-overhead" does)
            options = {"triton.cudagraphs": True} if device.type == "cuda" else None
            allow_compiled_graphs(COMPILED_GRAPHS)
            self.net = torch.compile(self.net, dynamic=False, options=options)
            self.compiled = True

    def _rewrite(self) -> str:
        """The CPU rewrite (efficiency/forms.py), the context branch's own inside it; says what was done."""
        fuse = self.dtype == torch.float32 or self.cast_weights or self.scope == "context"  # not under autocast
        self.net, done = rewrite_for_cpu(self.net, fuse=fuse, leaves=(ReducedPrecision,))
        inner = next((m for m in self.net.modules() if isinstance(m, ReducedPrecision)), None)
        if inner is not None and inner.cast_weights:
            inner.module, inner_done = rewrite_for_cpu(inner.module)
            done += f"; in {self.context}: {inner_done}"
        return done

    @property
    def half_weights(self) -> bool:
        """The whole network's weights (and its input) are in the reduced dtype (fp16 on CUDA, native ones on CPU)."""
        return self.cast_weights and self.scope == "all"

    @property
    def precision(self) -> str:
        """fp32, bf16, fp16, or mixed-bf16 / mixed-fp16 (context branch reduced, the rest fp32)."""
        return ("mixed-" if self.scope == "context" else "") + dtype_name(self.dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype) if self.half_weights else x

    def _compile_settings(self):
        if not self.compiled:
            return nullcontext()
        import torch._inductor.config as inductor_config

        # freezing makes the weights constants: inductor then prepacks them for oneDNN and fuses each conv with the
        # ReLU or residual add after it. It has to be set in the config itself (in options it is ignored) and only
        # applies to graphs compiled without autograd.
        return inductor_config.patch(freezing=True)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32 and self.scope == "all" and not self.cast_weights
            else nullcontext()
        )
        with autocast, self._compile_settings():
            if self._first_call_done or not self.compiled:
                return self.net(x)
            try:  # torch.compile compiles at the first call
                out = self.net(x)
            except Exception as error:
                raise UserError(
                    f"--compile: torch.compile failed ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0][:200]}); run without --compile"
                ) from None
            self._first_call_done = True
            return out

    def describe(self) -> str:
        precision = dtype_name(self.dtype)
        if self.dtype != torch.float32:
            precision += " weights" if self.cast_weights else " autocast"
        if self.scope == "context":
            precision += f" in {self.context}, fp32 elsewhere"
        return (
            f"{self.folded} BatchNorm folded, channels_last, {precision}"
            + (f", {self.rewritten}" if self.rewritten else "")
            + (", torch.compile (frozen weights)" if self.compiled else "")
        )


# Graphs dynamo keeps per code object (every compiled form of one architecture shares its `forward`): its default, 8,
# is reached by a few forms at a few sizes (3 precisions x 3 input shapes), after which it silently runs eager
COMPILED_GRAPHS = 64


def allow_compiled_graphs(count: int) -> None:
    """Let dynamo keep at least `count` compiled graphs per function before it falls back to eager."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, count)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@torch.inference_mode()
def agreement(plain: nn.Module, deploy: DeployForm, batches: Iterable[torch.Tensor]) -> float:
    """Fraction of pixels where the deploy form's argmax equals the plain fp32 model's."""
    same = total = 0
    for images in batches:
        reference = plain(images.to(deploy.device)).argmax(1)
        predicted = deploy(deploy.prepare(images)).float().argmax(1)
        same += int((reference == predicted).sum())
        total += reference.numel()
    return same / max(total, 1)


# ------------------------------------------------------------------------------------------------------ ONNX export

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_onnx(flag: str) -> None:
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"{flag}: needs the Python packages {', '.join(ONNX_PACKAGES)}; missing: {', '.join(missing)}"
            f" (expected them installed: pip install -r requirements.txt)"
        )


def export_onnx(
    model: nn.Module,
    hw: tuple[int, int],
    path,
    flag: str = "--export-onnx",
    batch: int = 1,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write the plain fp32 network with BatchNorm folded, for an input of static size `hw` (and `batch`), to `path`.

    Input `image` (batch, 3, H, W), normalised as in training; output `logits` (batch, classes, H, W). The dynamo
    exporter (`torch.onnx.export(dynamo=True)`, onnxscript) is used: the legacy TorchScript exporter stops at the
    pyramid pooling ("Unsupported: ONNX export of operator adaptive_avg_pool2d, output size that are not factor of input
    size": bins 3 and 6 of a 1/32 map), while the dynamo one lowers each adaptive pooling of a static size to fixed
    windows. `metadata` goes into the file's metadata_props (ONNX Runtime: `custom_metadata_map`). The file is written
    atomically and checked with onnx.checker. Returns the number of folded BatchNorms.
    """
    import contextlib
    import io
    import warnings

    from training.files import save_bytes

    require_onnx(flag)
    import onnx

    net = copy.deepcopy(model).eval().to(device="cpu", dtype=torch.float32)
    folded = fold_batchnorm(net)
    example = torch.zeros(batch, 3, *hw)
    chatter = io.StringIO()
    try:  # the exporter narrates its steps on stdout: kept for an error message only
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net, (example,), dynamo=True, input_names=["image"], output_names=["logits"], verbose=False
            )
    except Exception as error:
        raise UserError(
            f"{flag}: the ONNX export failed ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]})"
        ) from None
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    save_bytes(proto.SerializeToString(), path)
    return folded


class OnnxRuntimeForm:
    """An ONNX file run by ONNX Runtime, called like a model: a (N, 3, H, W) tensor in, logits out.

    On the CPU: threads as torch's (intra-op), one inter-op thread, all graph optimisations, ONNX Runtime's own arena
    allocator; `spinning` False makes its threads wait without spinning. `provider` "cuda": its CUDA execution
    provider (where the installed build has it), the tensors bound on the GPU where they are (no copies through the
    host).
    """

    def __init__(self, path, threads: int | None = None, provider: str = "cpu", spinning: bool = True):
        require_onnx("--export-onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # its threads spin between calls by default: fastest on idle cores, slower where others need them
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
        if name not in ort.get_available_providers():
            raise UserError(
                f"ONNX Runtime {ort.__version__}: no {name} in this build (it has "
                f"{', '.join(ort.get_available_providers())})"
            )
        self.session = ort.InferenceSession(str(path), options, providers=[name])
        self.provider = provider
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.output_name = self.session.get_outputs()[0].name
        self.output_shape = tuple(self.session.get_outputs()[0].shape)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)  # export_onnx's `metadata`
        self.threads = options.intra_op_num_threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.provider == "cuda":
            return self._run_on_gpu(x)
        x = x.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])

    def _run_on_gpu(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        x = x.detach().to("cuda", torch.float32).contiguous()
        out = torch.empty(self.output_shape, dtype=torch.float32, device=x.device)
        torch.cuda.current_stream(x.device).synchronize()  # ONNX Runtime reads x on a stream of its own
        binding = self.session.io_binding()
        for bind, name, tensor in (
            (binding.bind_input, self.input_name, x),
            (binding.bind_output, self.output_name, out),
        ):
            bind(name, "cuda", x.device.index or 0, np.float32, tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


@torch.inference_mode()
def compare_onnx(model: nn.Module, runtime: OnnxRuntimeForm, batches: Iterable[torch.Tensor]) -> tuple[float, float]:
    """Argmax agreement and max abs logit difference of ONNX Runtime vs the plain PyTorch model (each batch of 1
    resized to the ONNX input's static size)."""
    import torch.nn.functional as F

    hw = runtime.input_shape[2:]
    device = next(model.parameters()).device
    same = total = 0
    worst = 0.0
    for images in batches:
        if tuple(images.shape[2:]) != hw:
            images = F.interpolate(images, size=hw, mode="bilinear", align_corners=False)
        reference = model(images.to(device)).float().cpu()
        logits = runtime(images)
        worst = max(worst, float((logits - reference).abs().max()))
        same += int((logits.argmax(1) == reference.argmax(1)).sum())
        total += reference.argmax(1).numel()
    return same / max(total, 1), worst
