"""Architectures the scripts can train or distil from, and checked loading of their weights.

`fast_scnn` is the project's model. The torchvision segmentation models serve as large teachers (as in the
distillation papers the project follows); they are built without pretrained weights (nothing is downloaded) and
wrapped so that every architecture returns a plain logits tensor.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

import fast_scnn
from training.errors import UserError
from training.models.auxiliary import without_aux_heads

TORCHVISION_ARCHS = ("deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "lraspp_mobilenet_v3_large")
ARCHITECTURES = ("fast_scnn", *TORCHVISION_ARCHS)


class LogitsOnly(nn.Module):
    """A torchvision segmentation model whose forward returns its `['out']` logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_model(
    arch: str = "fast_scnn", num_classes: int = 19, aux: bool = False, dropout: float | None = None
) -> nn.Module:
    """`dropout`: Fast-SCNN's classifier dropout (None: the model's default, 0.1); other architectures keep theirs."""
    if arch == "fast_scnn":
        if dropout is None:
            return fast_scnn.Model(in_channels=3, n_classes=num_classes, aux=aux)
        return fast_scnn.Model(in_channels=3, n_classes=num_classes, aux=aux, dropout=dropout)
    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"--arch {arch!r}: unknown architecture; expected one of {', '.join(ARCHITECTURES)}")
    import torchvision.models.segmentation as segmentation

    builder = getattr(segmentation, arch)
    return LogitsOnly(builder(weights=None, weights_backbone=None, num_classes=num_classes))


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state_dict from `path`, loaded with weights_only=True; anything else is a UserError naming `what`."""
    path = Path(path)
    if not path.is_file():
        alternative = "" if "teacher" in what else ", or 'none'"
        raise UserError(f"{what} {path}: no such file (expected a .pth state_dict{alternative})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "not a checkpoint we can read"
        if not zipfile.is_zipfile(path):
            detail = "not a file written by torch.save"
        elif "weights only load failed" in str(error).lower():
            detail = (
                "it holds Python objects besides tensors, e.g. a whole pickled model, which weights_only=True "
                "refuses; save model.state_dict() instead"
            )
        else:
            detail = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint ({detail})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        if isinstance(state, dict) and "model" in state and "optimizer" in state:
            got = "a resumable training state (from checkpoints/<id>/; pass models/<id>.pth instead)"
        elif isinstance(state, dict) and state:
            first = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
            got = f"a dict with non-tensor entries, e.g. {first!r}"
        else:
            got = "an empty dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise UserError(
            f"{what} {path}: not a state_dict (expected a dict of tensors as written by "
            f"torch.save(model.state_dict()), got {got})"
        )
    return state


def _signature(arch: str) -> set[str]:
    with torch.device("meta"):
        return set(build_model(arch).state_dict())


def detect_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """The architecture whose parameter names match `state`, if any."""
    keys = set(state)
    for arch in ARCHITECTURES:
        if keys == _signature(arch):
            return arch
    return None


def num_classes_of(state: dict[str, torch.Tensor], arch: str) -> int | None:
    """The number of classes a state_dict of `arch` predicts (None if it is not one of `arch`): the first dimension
    of the first parameter whose shape follows the number of classes (found by building `arch` for 1 and for 2
    classes on the meta device)."""
    with torch.device("meta"):
        one, two = build_model(arch, 1).state_dict(), build_model(arch, 2).state_dict()
    for key in one:
        if one[key].shape != two[key].shape:
            return int(state[key].shape[0]) if key in state else None
    return None


def load_weights(
    model: nn.Module, path: str | Path, arch: str, what: str, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load `path` into `model` (of architecture `arch`), saying precisely what does not fit. Training-only
    auxiliary heads of `model` are not expected in the file (training/models/auxiliary.py initialises them).
    `state`: the file's state_dict, if already read."""
    state = read_state_dict(path, what) if state is None else state
    expected = without_aux_heads(model.state_dict())
    if set(state) != set(expected):
        found = detect_architecture(state)
        if found is not None and found != arch:
            raise UserError(
                f"{what} {path}: holds a {found} model, but the architecture is {arch} "
                f"(pass the matching --arch/--teacher-arch)"
            )
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise UserError(
            f"{what} {path}: not a {arch} state_dict ({len(missing)} missing keys, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            classes = state[key].shape[0] if key.endswith(("classifier.conv.weight", "classifier.conv.bias")) else None
            detail = f"; it was trained for {classes} classes, expected {tensor.shape[0]}" if classes else ""
            raise UserError(
                f"{what} {path}: shape of {key} is {tuple(state[key].shape)}, expected {tuple(tensor.shape)}{detail}"
            )
    model.load_state_dict(state, strict=len(expected) == len(model.state_dict()))


class FrozenTeacher(nn.Module):
    """A trained model used only for its predictions: eval mode, no gradients, never saved with the student."""

    def __init__(self, model: nn.Module, num_classes: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_classes = num_classes  # what its logits' channels are (checked against the student's data set)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return self  # stays in eval mode (BatchNorm statistics and dropout frozen)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def load_teacher(arch: str, path: str, num_classes: int | None = None) -> FrozenTeacher:
    """The frozen teacher at `path`; built for `num_classes`, by default for the classes its weights predict (the
    stage checks them against its data set's classes)."""
    flag = "--trained-teacher-model-path"
    if str(path).lower() in ("", "none"):
        raise UserError(f"{flag}: missing; expected the .pth of a trained teacher")
    state = read_state_dict(path, flag)
    if num_classes is None:
        num_classes = num_classes_of(state, arch) or 19  # not an `arch` state_dict: load_weights says why
    model = build_model(arch, num_classes)
    load_weights(model, path, arch, flag, state)
    return FrozenTeacher(model, num_classes)
