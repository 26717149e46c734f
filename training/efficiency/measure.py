"""What a trained model costs and how well it segments: the measuring code behind evaluate_efficiency.py.

- Parameters: the true count (sum of `numel` over `model.parameters()`) and their fp32 size in MB.
- MACs from thop (multiply-accumulates of the layers thop has rules for), FLOPs = 2 x MACs, cross-checked against
  `torch.utils.flop_counter.FlopCounterMode`, which counts the aten operators themselves. Both run on the meta
  device (shapes only, no arithmetic). A disagreement over 10% comes with the module types each counter sees and
  the other does not.
- The deploy form (efficiency/deploy.py: BatchNorm folded, channels_last, reduced precision, optionally compiled) is
  checked against the plain model's argmax predictions; a reduced precision that changes more than 0.1% of them is
  narrowed to the model's low-resolution context branch (mixed), and if that changes too many as well, replaced by
  fp32. The first rejected form is still timed alongside, for reference.
- Latency at batch 1, plain and deploy interleaved (both see the same background load): warm-up, then runs until
  each form has at least `runs` timings and `min_seconds` of them; median, p10 and p90; CUDA synchronised.
- Accuracy by `evaluation.scoring` (the stage's scorer: full resolution, fp32, optional test-time augmentation),
  streamed through a `ConfusionMatrix`: no prediction is kept.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import re
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# the deploy form's names stay reachable from here, as before they moved to training/efficiency/deploy.py
from training.efficiency.deploy import (
    CONTEXT_BRANCHES,  # noqa: F401
    DEPLOY_CHOICES,  # noqa: F401
    DeployForm,  # noqa: F401
    ReducedPrecision,  # noqa: F401
    agreement,  # noqa: F401
    choose_deploy_dtype,  # noqa: F401
    compare_onnx,  # noqa: F401
    context_branch,  # noqa: F401
    dtype_name,  # noqa: F401
    fold_batchnorm,  # noqa: F401
    native_bf16_cpu,  # noqa: F401
)
from training.engine.distributed import device_name
from training.errors import UserError
from training.profiles import PROFILES, resolve_profile

AGREEMENT_THRESHOLD = 0.999
MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)


# ---------------------------------------------------------------------------------------------------- input checks


def parse_resolution(text: str, flag: str = "--resolution") -> tuple[int, int]:
    """'1024x2048' -> (1024, 2048): height x width, positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"{flag} {text!r}: expected HxW with positive integers, e.g. 1024x2048 (height x width)")
    return int(match[1]), int(match[2])


def describe_allocator() -> str:
    """The C allocator settings this process started with (glibc reads them once, at start-up)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"{platform.system()} default allocator"
    settings = [f"{name}={os.environ[name]}" for name in MALLOC_VARIABLES if os.environ.get(name)]
    return "glibc " + (" ".join(settings) if settings else "default (dynamic mmap threshold)")


# ------------------------------------------------------------------------------------------------------- counting


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Cost:
    params: int
    macs: int  # thop
    flops: int  # 2 x macs
    flops_flop_counter: int  # torch.utils.flop_counter
    by_type: dict = field(default_factory=dict)  # module type -> (thop MACs, flop_counter MACs)
    warning: str | None = None

    @property
    def disagreement(self) -> float:
        return abs(self.flops_flop_counter - self.flops) / max(self.flops, 1)


def _thop():
    with warnings.catch_warnings():  # thop imports distutils' LooseVersion
        warnings.simplefilter("ignore")
        import thop
        from thop.profile import register_hooks
    return thop, register_hooks


def _meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta").eval()


def thop_macs(model: nn.Module, hw: tuple[int, int], layer_info: bool = False):
    """thop's MACs of one batch-1 forward pass at `hw` (thop.profile on a meta copy: nothing is computed)."""
    thop, _ = _thop()
    with torch.no_grad():
        result = thop.profile(
            _meta_copy(model), inputs=(torch.zeros(1, 3, *hw, device="meta"),), verbose=False, ret_layer_info=layer_info
        )
    return result if layer_info else result[0]


def flop_counter_flops(model: nn.Module, hw: tuple[int, int]) -> tuple[int, dict]:
    """torch.utils.flop_counter's FLOPs of one batch-1 forward pass, and its per-module counts."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = _meta_copy(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.zeros(1, 3, *hw, device="meta"))
    return counter.get_total_flops(), counter.get_flop_counts()


def _flatten_thop(tree: dict, prefix: str = "") -> dict[str, float]:
    """thop's nested {child: (ops, params, children)} as {dotted name: ops} of the modules thop counted itself."""
    flat = {}
    for name, (ops, _params, children) in tree.items():
        path = f"{prefix}{name}"
        flat.update(_flatten_thop(children, path + ".") if children else {path: ops})
    return flat


def measure_cost(model: nn.Module, hw: tuple[int, int], tolerance: float = 0.10) -> Cost:
    """Parameters, thop MACs and the flop_counter cross-check, with a per-module-type breakdown of both."""
    _, rules = _thop()
    macs, _, tree = thop_macs(model, hw, layer_info=True)
    fc_total, fc_counts = flop_counter_flops(model, hw)
    modules = dict(model.named_modules())
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, ops in _flatten_thop(tree).items():
        if name in modules:
            by_type[type(modules[name]).__name__][0] += ops
    # flop_counter attributes an operator to every module on the call stack; a module's own share is what its
    # children do not account for (functional calls in its forward, or the operator of a leaf module)
    root = type(model).__name__
    totals = {key: sum(ops.values()) for key, ops in fc_counts.items() if key != "Global"}
    for name, module in modules.items():
        key = f"{root}.{name}" if name else root
        own = totals.get(key, 0) - sum(totals.get(f"{key}.{child}", 0) for child, _ in module.named_children())
        if own > 0:
            by_type[type(module).__name__][1] += own / 2
    cost = Cost(
        count_parameters(model),
        int(macs),
        2 * int(macs),
        int(fc_total),
        {k: tuple(v) for k, v in sorted(by_type.items())},
    )
    if cost.disagreement > tolerance:

        def why(type_name: str) -> str:
            kinds = [m for m in modules.values() if type(m).__name__ == type_name]
            if any(list(m.children()) for m in kinds):
                return "operators called in its forward"
            return "thop has no rule for it" if not any(type(m) in rules for m in kinds) else "thop's rule differs"

        unseen = [f"{k} ({fc / 1e9:.3g} GMAC: {why(k)})" for k, (th, fc) in cost.by_type.items() if fc > 1.1 * th]
        extra = [f"{k} ({th / 1e9:.3g} GMAC)" for k, (th, fc) in cost.by_type.items() if th > 1.1 * fc]
        cost.warning = (
            f"thop's MACs ({cost.macs / 1e9:.3f} G) and flop_counter's ({cost.flops_flop_counter / 2e9:.3f} G)"
            f" differ by {100 * cost.disagreement:.0f}%; thop cannot see: {', '.join(unseen) or 'nothing'};"
            f" thop counts, flop_counter does not: {', '.join(extra) or 'nothing'}"
        )
    return cost


# ---------------------------------------------------------------------------------------------------------- latency


@dataclass
class Latency:
    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.times_ms)
        position = q / 100 * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms

    @property
    def runs(self) -> int:
        return len(self.times_ms)


@torch.inference_mode()
def measure_latency(
    forms: dict[str, tuple[Callable, torch.Tensor]],
    device: torch.device,
    runs: int = 50,
    min_seconds: float = 5.0,
    warmup: int = 5,
) -> dict[str, Latency]:
    """Batch-1 latency of several forms, each `(callable, its input)`, timed in turn run by run.

    Every form gets `warmup` untimed runs, then timed runs continue until each form has at least `runs` timings
    that add up to at least `min_seconds`. On CUDA the device is synchronised before and after each run.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for call, x in forms.values():
        for _ in range(warmup):
            call(x)
    sync()
    times: dict[str, list[float]] = {name: [] for name in forms}
    while any(len(t) < runs or sum(t) < 1000 * min_seconds for t in times.values()):
        for name, (call, x) in forms.items():
            sync()
            start = time.perf_counter()
            call(x)
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: Latency(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------------------ resolutions.csv

RESOLUTION_COLUMNS = ("number", "name", "image_width", "image_height", "patch_width", "patch_height")


def resolution_rows(table: dict = PROFILES) -> list[dict]:
    rows = []
    for name in table:
        profile = resolve_profile(name, table)
        (iw, ih), (pw, ph) = profile.image_size, profile.patch_size
        rows.append(dict(zip(RESOLUTION_COLUMNS, (profile.number, profile.name, iw, ih, pw, ph))))
    return rows


def resolutions_csv_text(table: dict = PROFILES) -> str:
    lines = [",".join(RESOLUTION_COLUMNS)]
    lines += [",".join(str(row[c]) for c in RESOLUTION_COLUMNS) for row in resolution_rows(table)]
    return "\n".join(lines) + "\n"


def write_resolutions(path: str | Path) -> Path:
    """(Re)generate measurements/resolutions.csv from training/profiles.py."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(resolutions_csv_text(), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- one whole model


@dataclass
class SizeResult:
    hw: tuple[int, int]
    cost: Cost
    plain: Latency
    deploy: Latency
    rejected: Latency | None = None  # the reduced-precision form that failed the agreement check, for reference
    onnxruntime: Latency | None = None  # the exported ONNX file under ONNX Runtime (at its static size only)


@dataclass
class ModelResult:
    deploy: str  # DeployForm.describe()
    dtype: torch.dtype  # the deploy form's reduced dtype (after any fallback)
    precision: str  # DeployForm.precision: fp32, bf16, fp16, mixed-bf16, mixed-fp16
    agreement: float  # argmax agreement deploy vs plain
    agreement_on: str  # what it was measured on
    sizes: list[SizeResult]
    accuracy: dict | None  # ConfusionMatrix.compute() of the first TTA mode, None without data
    val_images: int = 0
    rejected: str = ""  # the first reduced-precision form that failed the check, if any
    rejected_dtype: torch.dtype | None = None
    rejected_precision: str = ""
    rejected_agreement: float | None = None
    onnx_agreement: float | None = None  # ONNX Runtime vs the plain model, on the agreement inputs
    onnx_max_abs_diff: float | None = None
    accuracies: dict = field(default_factory=dict)  # TTA mode -> ConfusionMatrix.compute()

    @property
    def agreement_ok(self) -> bool:
        return self.agreement >= AGREEMENT_THRESHOLD


def _verdict(agree: float) -> str:
    return (
        f"{100 * agree:.3f}% ({'ok' if agree >= AGREEMENT_THRESHOLD else 'FAILED'}: "
        f">= {100 * AGREEMENT_THRESHOLD:.1f}% required)"
    )


def _spread(latency: Latency) -> str:
    return (
        f"{latency.median_ms:.1f} ms (p10 {latency.percentile_ms(10):.1f}, p90 {latency.percentile_ms(90):.1f},"
        f" {latency.runs} runs)"
    )


def agreement_inputs(val_set, hw: tuple[int, int], count: int) -> tuple[list[torch.Tensor], str]:
    """The first `count` validation images (one batch each), or seeded random inputs at `hw` without data."""
    if val_set is not None:
        from training.data.photometric import to_model_input  # the val set's images are uint8

        count = min(count, len(val_set))
        return [to_model_input(val_set[i][0].unsqueeze(0), "cpu") for i in range(count)], f"{count} val images"
    generator = torch.Generator().manual_seed(0)
    return (
        [torch.randn(1, 3, *hw, generator=generator) for _ in range(count)],
        f"{count} random inputs at {hw[0]}x{hw[1]}",
    )


def evaluate_model(
    model: nn.Module,
    sizes: list[tuple[int, int]],
    device: torch.device,
    dtype: torch.dtype,
    val_set=None,
    compile: bool = False,
    agreement_images: int = 4,
    batch_size: int = 4,
    num_workers: int = 0,
    runs: int = 50,
    min_seconds: float = 5.0,
    warmup: int = 5,
    num_classes: int = 19,
    fallback: bool = True,
    log: Callable[[str], None] = print,
    scope: str = "all",
    onnx=None,
    accuracy_sets: dict | None = None,
) -> ModelResult:
    """Cost and latency at every size, the deploy check, and accuracy on `val_set` (if given) of a model on `device`.

    `accuracy_sets` maps test-time augmentation modes (evaluation.scoring.TTA_MODES) to the data set each is scored
    on (default: "none" on `val_set`); data sets give full-resolution labels for full-resolution scores.

    With `fallback`, a reduced-precision deploy form whose argmax agreement with the plain model stays below
    AGREEMENT_THRESHOLD is replaced by the next one down: `dtype` in the context branch only (mixed), then fp32
    (folded, channels_last). The first that passes is measured; the first rejected one is timed alongside.
    `onnx` (a deploy.OnnxRuntimeForm) is checked against the plain model and timed beside it at its size.
    """
    model = model.eval()
    inputs, source = agreement_inputs(val_set, sizes[0], agreement_images)
    ladder = [(dtype, scope)]
    if fallback and dtype != torch.float32:
        # the fastest form whose predictions stay the model's: all reduced, then only the context branch, then fp32
        if scope == "all" and context_branch(model) is not None:
            ladder.append((dtype, "context"))
        ladder.append((torch.float32, "all"))
    rejected, rejected_agreement = None, None
    for step, (step_dtype, step_scope) in enumerate(ladder):
        deploy = DeployForm(model, device, step_dtype, scope=step_scope)
        agree = agreement(model, deploy, inputs)
        log(
            f"deploy form{' falls back to ' + deploy.precision if step else ''}: {deploy.describe()}; "
            f"argmax agreement with the plain model on {source}: {_verdict(agree)}"
        )
        if agree >= AGREEMENT_THRESHOLD or step == len(ladder) - 1:
            break
        if rejected is None:  # the first (fastest) rejected form is still timed alongside, for reference
            rejected, rejected_agreement = deploy, agree
    if compile:  # compiled once, for the precision that passed (and the rejected one, timed in the same form)
        deploy = DeployForm(model, device, deploy.dtype, compile=True, scope=deploy.scope)
        agree = agreement(model, deploy, inputs)
        log(f"compiled deploy form: {deploy.describe()}; agreement {_verdict(agree)}")
        if rejected is not None:
            rejected = DeployForm(model, device, rejected.dtype, compile=True, scope=rejected.scope)
    onnx_check = (None, None)
    if onnx is not None:
        onnx_check = compare_onnx(model, onnx, inputs)
        log(
            f"ONNX Runtime ({onnx.threads} threads) vs the plain model on {source} (resized to the ONNX input's "
            f"{onnx.input_shape[2]}x{onnx.input_shape[3]} where they differ): argmax agreement "
            f"{100 * onnx_check[0]:.4f}%, max abs logit difference {onnx_check[1]:.3g}"
        )
    results = []
    for hw in sizes:
        cost = measure_cost(model, hw)
        if cost.warning:
            log(f"warning: at {hw[0]}x{hw[1]}: {cost.warning}")
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1)).to(device)
        forms = {"plain": (model, x), "deploy": (deploy, deploy.prepare(x))}
        if rejected is not None:
            forms["rejected"] = (rejected, rejected.prepare(x))
        if onnx is not None and tuple(onnx.input_shape[2:]) == tuple(hw):
            forms["onnxruntime"] = (onnx, x.cpu())
        latency = measure_latency(forms, device, runs=runs, min_seconds=min_seconds, warmup=warmup)
        plain, fast, slow = latency["plain"], latency["deploy"], latency.get("rejected")
        log(
            f"{hw[0]}x{hw[1]}: {cost.macs / 1e9:.3f} GMACs (thop), {cost.flops / 1e9:.3f} GFLOPs = 2 x MACs, "
            f"flop_counter {cost.flops_flop_counter / 1e9:.3f} GFLOPs ({100 * cost.disagreement:.1f}% apart) | "
            f"latency plain {_spread(plain)} | deploy {_spread(fast)} | {fast.median_ms / plain.median_ms:.2f} x plain"
            f" ({fast.fps:.1f} FPS)"
            + (
                ""
                if slow is None
                else f" | rejected {rejected.precision} form "
                f"{_spread(slow)}, {slow.median_ms / plain.median_ms:.2f} x plain"
            )
            + (
                ""
                if "onnxruntime" not in latency
                else f" | ONNX Runtime {_spread(latency['onnxruntime'])}, "
                f"{latency['onnxruntime'].median_ms / plain.median_ms:.2f} x plain"
            )
        )
        results.append(SizeResult(hw, cost, plain, fast, slow, latency.get("onnxruntime")))
    if accuracy_sets is None:
        accuracy_sets = {"none": val_set} if val_set is not None else {}
    accuracies = {}
    for tta, dataset in accuracy_sets.items():
        from training.data.dataset import EpochSampler, make_loader
        from training.evaluation.scoring import collate, evaluate_accuracy

        sampler = EpochSampler(len(dataset), seed=0, shuffle=False)
        loader = make_loader(dataset, sampler, batch_size, num_workers, device, drop_last=False, collate_fn=collate)
        accuracies[tta] = evaluate_accuracy(model.eval(), loader, device, num_classes, tta=tta)
    accuracy = next(iter(accuracies.values()), None)
    return ModelResult(
        deploy.describe(),
        deploy.dtype,
        deploy.precision,
        agree,
        source,
        results,
        accuracy,
        len(val_set) if val_set is not None else 0,
        rejected.describe() if rejected else "",
        rejected.dtype if rejected else None,
        rejected.precision if rejected else "",
        rejected_agreement,
        *onnx_check,
        accuracies,
    )


def csv_rows(
    result: ModelResult,
    model: str,
    arch: str,
    profile,
    device: torch.device,
    threads: int | None,
    allocator: str,
    date: str,
    command: str,
    val_resolution: str = "full",
) -> list[dict]:
    """One row of measurements/efficiency.csv per measured size and TTA mode (accuracy cells empty without data;
    the cost and latency, always single-scale batch 1, repeat on every TTA row)."""

    def number(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    rows = []
    for size, (tta, acc) in (
        (size, mode) for size in result.sizes for mode in (result.accuracies.items() or [("", {})])
    ):
        gflops, plain, deploy = size.cost.flops / 1e9, size.plain, size.deploy
        rows.append(
            {
                "model": model,
                "arch": arch,
                "profile": profile.name,
                "resolution": f"{size.hw[0]}x{size.hw[1]}",
                "device": device.type,
                "device_name": device_name(device),
                "dtype": result.precision,
                "params": size.cost.params,
                "macs": size.cost.macs,
                "flops": size.cost.flops,
                "flops_flop_counter": size.cost.flops_flop_counter,
                "latency_ms_plain": number(plain.median_ms, 3),
                "latency_ms_plain_p10": number(plain.percentile_ms(10), 3),
                "latency_ms_plain_p90": number(plain.percentile_ms(90), 3),
                "latency_ms_deploy": number(deploy.median_ms, 3),
                "latency_ms_deploy_p10": number(deploy.percentile_ms(10), 3),
                "latency_ms_deploy_p90": number(deploy.percentile_ms(90), 3),
                "runs": deploy.runs,
                "fps_plain": number(plain.fps, 2),
                "fps_deploy": number(deploy.fps, 2),
                "speedup": number(plain.median_ms / deploy.median_ms, 3),
                "deploy": result.deploy,
                "agreement": number(result.agreement, 6),
                "rejected_dtype": result.rejected_precision,
                "rejected_agreement": number(result.rejected_agreement, 6),
                "rejected_latency_ms": number(size.rejected.median_ms if size.rejected else None, 3),
                "latency_ms_onnxruntime": number(size.onnxruntime.median_ms if size.onnxruntime else None, 3),
                "onnx_agreement": number(result.onnx_agreement, 6) if size.onnxruntime else "",
                "onnx_max_abs_diff": f"{result.onnx_max_abs_diff:.3g}" if size.onnxruntime else "",
                "threads": threads if threads else "",
                "allocator": allocator,
                "eval_size": f"{profile.image_size[0]}x{profile.image_size[1]}" if acc else "",
                "val_resolution": val_resolution if acc else "",
                "tta": tta,
                "miou": number(acc.get("miou"), 6),
                "mean_dice": number(acc.get("mean_dice"), 6),
                "pixel_accuracy": number(acc.get("pixel_accuracy"), 6),
                "miou_per_gflop": number(acc["miou"] / gflops, 6) if acc else "",
                "dice_per_gflop": number(acc["mean_dice"] / gflops, 6) if acc else "",
                "date": date,
                "command": command,
            }
        )
    return rows


SHEET_COLUMNS = (
    ("model", "model"),
    ("resolution", "HxW"),
    ("params", "params"),
    ("macs", "GMACs"),
    ("flops", "GFLOPs"),
    ("dtype", "deploy"),
    ("latency_ms_plain", "plain ms"),
    ("latency_ms_deploy", "deploy ms"),
    ("speedup", "speed-up"),
    ("fps_deploy", "FPS"),
    ("tta", "TTA"),
    ("miou", "mIoU"),
    ("mean_dice", "mean Dice"),
    ("dice_per_gflop", "Dice/GFLOP"),
)


def format_sheet(rows: list[dict]) -> str:
    """The rows as the original's efficiency sheet: one aligned line per model and resolution, MACs/FLOPs in G."""
    shown = lambda key, value: f"{int(value) / 1e9:.2f}" if key in ("macs", "flops") else str(value)  # noqa: E731
    table = [[title for _, title in SHEET_COLUMNS]] + [[shown(k, row[k]) for k, _ in SHEET_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(SHEET_COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths)))
        for line in table
    )
