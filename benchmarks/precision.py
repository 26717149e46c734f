"""Which parts of a model keep its predictions in reduced precision: each part alone in bf16 (or fp16), the rest fp32.

    python benchmarks/precision.py --model-path models/fastscnn-training-experiment-05.pth
    python benchmarks/precision.py --model-path models/... --dtype fp16 --size 512x1024

A deploy form in reduced precision is used only where its argmax agrees with the plain model's on at least 99.9% of
the pixels (efficiency/deploy.py `agreement`); evaluate_efficiency.py steps down from bf16 to mixed (the context
branch only) to fp32 until one does. This tells where the disagreement comes from and what each part weighs: for
every part of the network (the model's children and their children; the auxiliary heads left out), the agreement
when that part alone runs in --dtype, and its share of the convolutions' multiply-accumulates (what the part in
reduced precision could save at most). Then the whole network in --dtype, and the plain model's logit margins (top-1
minus top-2 logit): a model with small margins flips pixels under any rounding (random weights: ~1e-5).

Protocol: BatchNorm folded, as in every deploy form; a part in reduced precision has its weights cast, its inputs
cast on the way in and its outputs back to fp32 on the way out (as deploy.ReducedPrecision does for the mixed forms'
context branch); the inputs are painted demo street scenes (demo/scene.py) at --size, normalised as in training.
No timing: the figures do not depend on the machine's load. The last line: `alone at >= 99.9%: PARTS (X% of the
MACs); all of the network: Y%`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

THRESHOLD = 0.999  # deploy forms' agreement threshold (efficiency/measure.py)
LEFT_OUT = ("aux_heads",)  # training-only parts


def parse_args(argv: list[str]) -> argparse.Namespace:
    from inference import add_model_arguments  # imports no torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_model_arguments(add)
    add("--dtype", choices=("bf16", "fp16"), default="bf16", help="the reduced precision tried part by part")
    add("--size", default="1024x2048", help="HxW of the painted scenes")
    add("--images", type=int, default=4, help="painted scenes the agreement is counted on")
    add("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    return parser.parse_args(argv)


def parts_of(model) -> list[str]:
    """Qualified names of the model's children and their children that have weights, in order; training-only parts
    left out."""
    names = []
    for name, child in model.named_children():
        if name in LEFT_OUT or not has_weights(child):
            continue
        names.append(name)
        names += [f"{name}.{inner}" for inner, module in child.named_children() if has_weights(module)]
    return names


def has_weights(module) -> bool:
    return next(module.parameters(), None) is not None


def conv_macs(model, images) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d of `model` on `images`, by qualified name (counted from the output's
    size: out elements x in-channels per group x kernel area)."""
    import torch
    from torch import nn

    counts, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def count(conv, _inputs, output, name=name):
                per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
                counts[name] = counts.get(name, 0) + output.numel() * per_output

            hooks.append(module.register_forward_hook(count))
    with torch.inference_mode():
        model(images)
    for hook in hooks:
        hook.remove()
    return counts


def share(macs: dict[str, int], part: str) -> float:
    total = sum(macs.values())
    inside = sum(count for name, count in macs.items() if name == part or name.startswith(part + "."))
    return inside / max(total, 1)


def reduced(folded, parts: list[str], dtype):
    """A copy of the folded model with each of `parts` (or all of it: parts == ['']) in `dtype`."""
    from training.efficiency.deploy import ReducedPrecision

    if parts == [""]:
        return ReducedPrecision(copy.deepcopy(folded), dtype, "cpu", cast_weights=True)
    net = copy.deepcopy(folded)
    for part in parts:
        parent, _, name = part.rpartition(".")
        owner = net.get_submodule(parent)
        setattr(owner, name, ReducedPrecision(getattr(owner, name), dtype, "cpu", cast_weights=True))
    return net


def agreement(net, images, reference) -> float:
    import torch

    with torch.inference_mode():
        predicted = torch.cat([net(image[None]).argmax(1) for image in images])
    return float((predicted == reference).double().mean())


def run(args: argparse.Namespace) -> None:
    import torch
    from inference import load_model, painted_scenes

    from training.efficiency.deploy import fold_batchnorm
    from training.efficiency.measure import parse_resolution
    from training.errors import UserError

    if args.images < 1:
        raise UserError(f"--images {args.images}: expected at least one painted scene")
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = parse_resolution(args.size, "--size")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    folded = copy.deepcopy(load_model(args))
    fold_batchnorm(folded)
    images = painted_scenes(hw, args.images)
    with torch.inference_mode():
        logits = torch.cat([folded(image[None]) for image in images])
    reference, top2 = logits.argmax(1), logits.topk(2, dim=1).values
    margins = (top2[:, 0] - top2[:, 1]).flatten()
    macs = conv_macs(folded, images[:1])
    quantiles = ", ".join(
        f"{100 * q:g}% {margins.kthvalue(max(1, int(q * margins.numel()))).values:.4g}" for q in (0.001, 0.01, 0.1, 0.5)
    )
    print(
        f"precision sensitivity: {args.arch}, weights {args.model_path}, {args.dtype}, {args.images} painted scenes "
        f"at {hw[0]}x{hw[1]}; fp32 logit margins (top-1 minus top-2), quantiles: {quantiles}"
    )
    print(f"  {'part':<40} {'MACs':>7} {'agreement':>10}")
    passing = []
    for part in parts_of(folded):
        agree = agreement(reduced(folded, [part], dtype), images, reference)
        passing += [part] if agree >= THRESHOLD and "." not in part else []
        print(f"  {part:<40} {100 * share(macs, part):6.1f}% {100 * agree:9.3f}%", flush=True)
    whole = agreement(reduced(folded, [""], dtype), images, reference)
    print(f"  {'(all of the network)':<40} {100.0:6.1f}% {100 * whole:9.3f}%")
    kept = sum(share(macs, part) for part in passing)
    print(
        f"alone at >= {100 * THRESHOLD:g}%: {', '.join(passing) or 'none'} ({100 * kept:.1f}% of the MACs); "
        f"all of the network: {100 * whole:.3f}%"
    )


def main(argv: list[str]) -> None:
    from training.errors import run_cli

    args = parse_args(argv)
    run_cli(lambda _: run(args), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
