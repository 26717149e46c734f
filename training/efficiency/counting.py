"""What one forward pass costs: parameters, thop's MACs, and torch.utils.flop_counter as a cross-check.

- Parameters: the true count (sum of `numel` over `model.parameters()`).
- MACs from thop (multiply-accumulates of the layers thop has rules for), FLOPs = 2 x MACs, cross-checked against
  `torch.utils.flop_counter.FlopCounterMode`, which counts the aten operators themselves. Both run on the meta
  device (shapes only, no arithmetic). A disagreement over 10% comes with the module types each counter sees and
  the other does not.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn


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


def _macs_by_type(model: nn.Module, thop_tree: dict, flop_counts: dict) -> dict[str, tuple[float, float]]:
    """Module type -> (thop MACs, flop_counter MACs) of the modules of that type."""
    modules = dict(model.named_modules())
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, ops in _flatten_thop(thop_tree).items():
        if name in modules:
            by_type[type(modules[name]).__name__][0] += ops
    # flop_counter attributes an operator to every module on the call stack; a module's own share is what its
    # children do not account for (functional calls in its forward, or the operator of a leaf module)
    root = type(model).__name__
    totals = {key: sum(ops.values()) for key, ops in flop_counts.items() if key != "Global"}
    for name, module in modules.items():
        key = f"{root}.{name}" if name else root
        own = totals.get(key, 0) - sum(totals.get(f"{key}.{child}", 0) for child, _ in module.named_children())
        if own > 0:
            by_type[type(module).__name__][1] += own / 2
    return {k: tuple(v) for k, v in sorted(by_type.items())}


def _disagreement_warning(model: nn.Module, cost: Cost) -> str:
    """Which module types one counter sees and the other does not, and why thop may miss them."""
    _, rules = _thop()
    modules = list(model.modules())

    def why(type_name: str) -> str:
        kinds = [m for m in modules if type(m).__name__ == type_name]
        if any(list(m.children()) for m in kinds):
            return "operators called in its forward"
        return "thop has no rule for it" if not any(type(m) in rules for m in kinds) else "thop's rule differs"

    unseen = [f"{k} ({fc / 1e9:.3g} GMAC: {why(k)})" for k, (th, fc) in cost.by_type.items() if fc > 1.1 * th]
    extra = [f"{k} ({th / 1e9:.3g} GMAC)" for k, (th, fc) in cost.by_type.items() if th > 1.1 * fc]
    return (
        f"thop's MACs ({cost.macs / 1e9:.3f} G) and flop_counter's ({cost.flops_flop_counter / 2e9:.3f} G)"
        f" differ by {100 * cost.disagreement:.0f}%; thop cannot see: {', '.join(unseen) or 'nothing'};"
        f" thop counts, flop_counter does not: {', '.join(extra) or 'nothing'}"
    )


def measure_cost(model: nn.Module, hw: tuple[int, int], tolerance: float = 0.10) -> Cost:
    """Parameters, thop MACs and the flop_counter cross-check, with a per-module-type breakdown of both."""
    macs, _, tree = thop_macs(model, hw, layer_info=True)
    fc_total, fc_counts = flop_counter_flops(model, hw)
    cost = Cost(count_parameters(model), int(macs), 2 * int(macs), int(fc_total), _macs_by_type(model, tree, fc_counts))
    if cost.disagreement > tolerance:
        cost.warning = _disagreement_warning(model, cost)
    return cost
