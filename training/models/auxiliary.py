"""Fast-SCNN's two auxiliary heads in training (deep supervision, `fast_scnn.Model(aux=True)`).

The heads (on the 64-channel 1/8 features and on the 128-channel context features) are training-only: their
weights live in the resumable state (`checkpoints/<id>/state.pth`: the current ones in "model", the best epoch's in
"best_aux_heads") and are dropped from `models/<id>.pth`, which stays a state_dict that `fast_scnn.Model()` loads
strictly. A next stage with heads starts them from the previous stage's best epoch: `models/<prev>.pth` lacks them,
so they are read from `checkpoints/<prev>/state.pth` (next to the models/ folder of --previous-model-path, else under
the working folder); a previous stage without heads (or without that state) leaves them freshly initialised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.losses import cross_entropy

AUX_PREFIX = "aux_heads."


def without_aux_heads(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX)}


def aux_heads_state(state: dict) -> dict:
    """The heads' entries of a model state_dict (copied: the live tensors change in later steps)."""
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(AUX_PREFIX)}


def auxiliary_loss(aux_logits, target: torch.Tensor, weight: float) -> torch.Tensor:
    """weight x the cross-entropy of each head (void ignored), summed over the heads (mmseg's weight 0.4 each)."""
    return weight * sum(cross_entropy(logits, target) for logits in aux_logits)


def previous_state_path(init_from: str) -> Path | None:
    """checkpoints/<id>/state.pth of the stage that wrote `init_from` = .../models/<id>.pth, if there is one."""
    model = Path(init_from)
    for candidate in (
        model.parent.parent / "checkpoints" / model.stem / "state.pth",
        Path("checkpoints") / model.stem / "state.pth",
    ):
        if candidate.is_file():
            return candidate
    return None


def init_aux_heads(model: nn.Module, init_from: str) -> str:
    """Load the previous stage's best auxiliary heads into `model` where it has them; returns what was done."""
    if str(init_from).lower() == "none":
        return "aux heads: random init"
    path = previous_state_path(init_from)
    if path is None:
        return f"aux heads: random init (no checkpoints/{Path(init_from).stem}/state.pth beside {init_from})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        return f"aux heads: random init ({path} unreadable: {type(error).__name__})"
    heads = state.get("best_aux_heads") if isinstance(state, dict) else None
    if not heads:
        return f"aux heads: random init ({path} has none: the previous stage trained without them)"
    wanted = aux_heads_state(model.state_dict())
    if set(heads) != set(wanted) or any(heads[k].shape != wanted[k].shape for k in wanted):
        return f"aux heads: random init (those in {path} do not fit this model)"
    model.load_state_dict(heads, strict=False)
    return f"aux heads: from {path} (its best epoch)"
