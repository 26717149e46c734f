"""One whole model measured: the deploy check, cost and latency at every size, accuracy (evaluate_efficiency.py).

- The deploy form (efficiency/deploy.py: BatchNorm folded, channels_last, reduced precision, optionally compiled) is
  checked against the plain model's argmax predictions; a reduced precision that changes more than 0.1% of them is
  narrowed to the model's low-resolution context branch (mixed), and if that changes too many as well, replaced by
  fp32. The first rejected form is still timed alongside, for reference.
- Cost (efficiency/counting.py) and batch-1 latency of the plain and deploy forms (efficiency/latency.py) at every
  measured size: the profile's image size first, then each `--resolution`.
- Accuracy by `evaluation.scoring` (the stage's scorer: full resolution, fp32, optional test-time augmentation),
  streamed through a `ConfusionMatrix`: no prediction is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from training.efficiency.counting import Cost, measure_cost
from training.efficiency.deploy import DeployForm, agreement, compare_onnx, context_branch
from training.efficiency.latency import Latency, measure_latency
from training.errors import UserError
from training.profiles import Profile

AGREEMENT_THRESHOLD = 0.999


def parse_resolution(text: str, flag: str = "--resolution") -> tuple[int, int]:
    """'1024x2048' -> (1024, 2048): height x width, positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"{flag} {text!r}: expected HxW with positive integers, e.g. 1024x2048 (height x width)")
    return int(match[1]), int(match[2])


def measured_sizes(profile: Profile, resolutions: list[str]) -> list[tuple[int, int]]:
    """(H, W) of every measured size: the profile's image size (what the accuracy is predicted at), then each
    --resolution not already in the list."""
    return list(dict.fromkeys([profile.image_hw] + [parse_resolution(r) for r in resolutions]))


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


@dataclass
class ChosenForm:
    deploy: DeployForm
    agreement: float
    rejected: DeployForm | None = None  # the first (fastest) form that failed the check, timed for reference
    rejected_agreement: float | None = None


def choose_form(model, device, dtype, scope, inputs, source, fallback=True, compile=False, log=print) -> ChosenForm:
    """The fastest deploy form whose predictions stay the model's: `dtype` everywhere, then (with `fallback`) only in
    the context branch, then fp32; compiled once at the end for the precision that passed."""
    ladder = [(dtype, scope)]
    if fallback and dtype != torch.float32:
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
        if rejected is None:
            rejected, rejected_agreement = deploy, agree
    if compile:  # the rejected one is timed in the same form
        deploy = DeployForm(model, device, deploy.dtype, compile=True, scope=deploy.scope)
        agree = agreement(model, deploy, inputs)
        log(f"compiled deploy form: {deploy.describe()}; agreement {_verdict(agree)}")
        if rejected is not None:
            rejected = DeployForm(model, device, rejected.dtype, compile=True, scope=rejected.scope)
    return ChosenForm(deploy, agree, rejected, rejected_agreement)


def _size_line(hw, cost: Cost, latency: dict[str, Latency], rejected: DeployForm | None) -> str:
    plain, fast = latency["plain"], latency["deploy"]
    line = (
        f"{hw[0]}x{hw[1]}: {cost.macs / 1e9:.3f} GMACs (thop), {cost.flops / 1e9:.3f} GFLOPs = 2 x MACs, "
        f"flop_counter {cost.flops_flop_counter / 1e9:.3f} GFLOPs ({100 * cost.disagreement:.1f}% apart) | "
        f"latency plain {plain.describe()} | deploy {fast.describe()} | {fast.median_ms / plain.median_ms:.2f} x "
        f"plain ({fast.fps:.1f} FPS)"
    )
    if "rejected" in latency:
        slow = latency["rejected"]
        ratio = slow.median_ms / plain.median_ms
        line += f" | rejected {rejected.precision} form {slow.describe()}, {ratio:.2f} x plain"
    if "onnxruntime" in latency:
        ort = latency["onnxruntime"]
        line += f" | ONNX Runtime {ort.describe()}, {ort.median_ms / plain.median_ms:.2f} x plain"
    return line


def measure_size(model, hw, device, form: ChosenForm, onnx=None, log=print, **timing) -> SizeResult:
    """Cost and interleaved batch-1 latency of the plain, deploy (and rejected, ONNX Runtime) forms at `hw`."""
    cost = measure_cost(model, hw)
    if cost.warning:
        log(f"warning: at {hw[0]}x{hw[1]}: {cost.warning}")
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1)).to(device)
    forms = {"plain": (model, x), "deploy": (form.deploy, form.deploy.prepare(x))}
    if form.rejected is not None:
        forms["rejected"] = (form.rejected, form.rejected.prepare(x))
    if onnx is not None and tuple(onnx.input_shape[2:]) == tuple(hw):
        forms["onnxruntime"] = (onnx, x.cpu())
    latency = measure_latency(forms, device, **timing)
    log(_size_line(hw, cost, latency, form.rejected))
    plain, fast = latency["plain"], latency["deploy"]
    return SizeResult(hw, cost, plain, fast, latency.get("rejected"), latency.get("onnxruntime"))


def score_accuracy(model, accuracy_sets: dict, device, batch_size: int, num_workers: int, num_classes: int) -> dict:
    """TTA mode -> the metrics of `model` on the data set scored for it (evaluation.scoring's protocol)."""
    from training.data.dataset import EpochSampler, make_loader
    from training.evaluation.scoring import collate, evaluate_accuracy

    accuracies = {}
    for tta, dataset in accuracy_sets.items():
        sampler = EpochSampler(len(dataset), seed=0, shuffle=False)
        loader = make_loader(dataset, sampler, batch_size, num_workers, device, drop_last=False, collate_fn=collate)
        accuracies[tta] = evaluate_accuracy(model.eval(), loader, device, num_classes, tta=tta)
    return accuracies


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

    `accuracy_sets` maps test-time augmentation modes (evaluation.tta.TTA_MODES) to the data set each is scored
    on (default: "none" on `val_set`); data sets give full-resolution labels for full-resolution scores.
    With `fallback`, a reduced-precision deploy form whose argmax agreement with the plain model stays below
    AGREEMENT_THRESHOLD is replaced by the next one down (`choose_form`). `onnx` (a deploy.OnnxRuntimeForm) is
    checked against the plain model and timed beside it at its size.
    """
    model = model.eval()
    inputs, source = agreement_inputs(val_set, sizes[0], agreement_images)
    form = choose_form(model, device, dtype, scope, inputs, source, fallback, compile, log)
    onnx_check = (None, None)
    if onnx is not None:
        onnx_check = compare_onnx(model, onnx, inputs)
        log(
            f"ONNX Runtime ({onnx.threads} threads) vs the plain model on {source} (resized to the ONNX input's "
            f"{onnx.input_shape[2]}x{onnx.input_shape[3]} where they differ): argmax agreement "
            f"{100 * onnx_check[0]:.4f}%, max abs logit difference {onnx_check[1]:.3g}"
        )
    timing = {"runs": runs, "min_seconds": min_seconds, "warmup": warmup}
    results = [measure_size(model, hw, device, form, onnx, log, **timing) for hw in sizes]
    if accuracy_sets is None:
        accuracy_sets = {"none": val_set} if val_set is not None else {}
    accuracies = score_accuracy(model, accuracy_sets, device, batch_size, num_workers, num_classes)
    rejected = form.rejected
    return ModelResult(
        form.deploy.describe(),
        form.deploy.dtype,
        form.deploy.precision,
        form.agreement,
        source,
        results,
        next(iter(accuracies.values()), None),
        len(val_set) if val_set is not None else 0,
        rejected.describe() if rejected else "",
        rejected.dtype if rejected else None,
        rejected.precision if rejected else "",
        form.rejected_agreement,
        *onnx_check,
        accuracies,
    )
