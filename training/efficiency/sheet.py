"""The efficiency sheet (measurements/efficiency.csv: its rows, and the aligned table printed after a run) and the
generated sheet of resolution profiles (measurements/resolutions.csv).

Accuracy per GFLOP (`miou_per_gflop`, `dice_per_gflop`) is filled only where the accuracy and the GFLOPs belong to
one computation: the row of the size the network saw the validation images at (the profile's image size), without
test-time augmentation. On a `--resolution` row the GFLOPs are those of another input size, and under `flip` or
`multiscale` one prediction costs several forward passes (of several sizes): there the ratio would divide one
measurement by the cost of another, so the cell is empty (the mIoU itself is repeated, with its `eval_size`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.data.classes import CITYSCAPES, ClassSet
from training.efficiency.measure import ModelResult, SizeResult
from training.profiles import PROFILES, Profile, resolve_profile
from training.runtime.distributed import device_name

EFFICIENCY_CSV = Path("measurements") / "efficiency.csv"  # under --output-dir
RESOLUTIONS_CSV = Path("measurements") / "resolutions.csv"


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


# ------------------------------------------------------------------------------------------------- efficiency.csv


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cost_and_latency(result: ModelResult, size: SizeResult) -> dict:
    """The columns of one measured size: cost, the latency of each form, the deploy check."""
    plain, deploy, ort = size.plain, size.deploy, size.onnxruntime
    return {
        "params": size.cost.params,
        "macs": size.cost.macs,
        "flops": size.cost.flops,
        "flops_flop_counter": size.cost.flops_flop_counter,
        "latency_ms_plain": _number(plain.median_ms, 3),
        "latency_ms_plain_p10": _number(plain.percentile_ms(10), 3),
        "latency_ms_plain_p90": _number(plain.percentile_ms(90), 3),
        "latency_ms_deploy": _number(deploy.median_ms, 3),
        "latency_ms_deploy_p10": _number(deploy.percentile_ms(10), 3),
        "latency_ms_deploy_p90": _number(deploy.percentile_ms(90), 3),
        "runs": deploy.runs,
        "fps_plain": _number(plain.fps, 2),
        "fps_deploy": _number(deploy.fps, 2),
        "speedup": _number(plain.median_ms / deploy.median_ms, 3),
        "deploy": result.deploy,
        "agreement": _number(result.agreement, 6),
        "rejected_dtype": result.rejected_precision,
        "rejected_agreement": _number(result.rejected_agreement, 6),
        "rejected_latency_ms": _number(size.rejected.median_ms if size.rejected else None, 3),
        "latency_ms_onnxruntime": _number(ort.median_ms if ort else None, 3),
        "onnx_agreement": _number(result.onnx_agreement, 6) if ort else "",
        "onnx_max_abs_diff": f"{result.onnx_max_abs_diff:.3g}" if ort else "",
    }


def _accuracy(acc: dict, size: SizeResult, profile: Profile, tta: str, val_resolution: str) -> dict:
    """The accuracy columns of one row; per GFLOP only where this row's GFLOPs are what the accuracy cost."""
    one_computation = bool(acc) and tuple(size.hw) == tuple(profile.image_hw) and tta == "none"
    gflops = size.cost.flops / 1e9
    return {
        "eval_size": f"{profile.image_size[0]}x{profile.image_size[1]}" if acc else "",
        "val_resolution": val_resolution if acc else "",
        "tta": tta,
        "miou": _number(acc.get("miou"), 6),
        "mean_dice": _number(acc.get("mean_dice"), 6),
        "pixel_accuracy": _number(acc.get("pixel_accuracy"), 6),
        "miou_per_gflop": _number(acc["miou"] / gflops, 6) if one_computation else "",
        "dice_per_gflop": _number(acc["mean_dice"] / gflops, 6) if one_computation else "",
    }


def csv_rows(
    result: ModelResult,
    model: str,
    arch: str,
    profile: Profile,
    device: torch.device,
    threads: int | None,
    allocator: str,
    date: str,
    command: str,
    val_resolution: str = "full",
    classes: ClassSet = CITYSCAPES,
    backend: str = "torch",
) -> list[dict]:
    """One row of measurements/efficiency.csv per measured size and TTA mode (accuracy cells empty without data;
    the cost and latency, always single-scale batch 1, repeat on every TTA row). `classes`: the model's (the data
    set its accuracy is scored on: `dataset`, and `classes`, their number). `backend`: what ran the deploy column
    and scored the accuracy (torch: the deploy form times, the plain model scores; onnxruntime: ONNX Runtime both)."""
    rows = []
    for size in result.sizes:
        for tta, acc in result.accuracies.items() or [("", {})]:
            rows.append(
                {
                    "model": model,
                    "arch": arch,
                    "profile": profile.name,
                    "dataset": classes.dataset,
                    "classes": classes.num_classes,
                    "resolution": f"{size.hw[0]}x{size.hw[1]}",
                    "device": device.type,
                    "device_name": device_name(device),
                    "backend": backend,
                    "dtype": result.precision,
                    **_cost_and_latency(result, size),
                    "threads": threads if threads else "",
                    "allocator": allocator,
                    **_accuracy(acc, size, profile, tta, val_resolution),
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
    ("backend", "backend"),
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
