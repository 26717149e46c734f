"""What evaluate_efficiency.py does with its models: load each with its card, measure it, print and append rows.

Each model is measured at the profile its card records (training/evaluation/trained.py; `--profile` overrides, no
card: the default with a note): the accuracy is predicted at that profile's image size, and cost and latency are
measured there and at every `--resolution`. Rows go to the efficiency sheet model by model, so an interrupted
`--all` keeps what it measured.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.efficiency import backends, deploy
from training.efficiency.allocator import describe_allocator
from training.efficiency.counting import count_parameters
from training.efficiency.measure import evaluate_model, measured_sizes, parse_resolution
from training.efficiency.sheet import csv_rows, format_sheet
from training.errors import UserError
from training.evaluation.scoring import accuracy_sets, describe_scoring, format_scores
from training.evaluation.trained import TrainedModel, data_set_of, load_trained, read_trained
from training.files import append_csv_row
from training.runtime.distributed import device_name


def model_paths(args) -> list[Path]:
    if args.model:
        return [Path(args.model)]
    folder = Path(args.all)
    paths = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if not paths:
        raise UserError(f"--all {folder}: " + ("no .pth files in it" if folder.is_dir() else "no such directory"))
    return paths


def load_models(args, device: torch.device, with_data: bool) -> list[tuple[TrainedModel, nn.Module]]:
    """Every model, read with its card and loaded, with the data set that scores it (its own: a data set of other
    classes is refused): every input is checked before anything is measured or written."""
    models = []
    for path in model_paths(args):
        trained = read_trained(path, args.arch, args.profile)
        if with_data:
            trained.dataset, trained.data_dir = data_set_of(trained, args.dataset, args.data_dir)
        model = load_trained(trained, device, "--all" if args.all else "--current-model-path")
        models.append((trained, model))
    return models


def export_onnx_form(model: nn.Module, path: str, hw: tuple[int, int], threads: int | None, log=print):
    """Write the ONNX file (fp32, BatchNorm folded, static `hw`) and open it under ONNX Runtime, to be checked and
    timed beside the other forms."""
    folded = deploy.export_onnx(model, hw, path)
    log(
        f"wrote {path}: fp32, {folded} BatchNorm folded, input 'image' 1x3x{hw[0]}x{hw[1]} (static), output 'logits' "
        f"(torch.onnx.export dynamo=True)"
    )
    return deploy.OnnxRuntimeForm(path, threads, spinning=False)  # timed interleaved: no spinning threads


@dataclass
class Session:
    """What every model of one run is measured with."""

    args: object
    device: torch.device
    command: str
    csv_path: Path
    dtype: torch.dtype
    scope: str
    threads: int | None
    allocator: str
    sets: dict  # (data set, its folder, profile) -> (val set, {tta mode: data set}); built once each

    def accuracy_sets(self, trained: TrainedModel):
        if trained.data_dir is None:
            return None, {}
        key = (trained.dataset, trained.data_dir, trained.profile)
        if key not in self.sets:
            args = self.args
            self.sets[key] = accuracy_sets(
                trained.data_dir, trained.profile, args.tta, args.val_resolution, trained.dataset
            )
        return self.sets[key]


def print_accuracies(result, trained: TrainedModel, val_resolution: str, log=print) -> None:
    """The per-class table and the scores line of every TTA mode."""
    profile = trained.profile
    scoring = describe_scoring(val_resolution, profile)
    for tta, acc in result.accuracies.items():
        seen = f"{result.val_images} images seen at {profile.image_size[0]}x{profile.image_size[1]}"
        log(format_scores(acc, trained.classes.names, "val", f"{seen}, scored at {scoring}, tta {tta}"))


def measure_one(session: Session, trained: TrainedModel, model: nn.Module, log=print) -> list[dict]:
    """Measure one model with every --backend, print its figures, append its rows to the sheet; returns the rows."""
    params = count_parameters(model)
    log(f"\n== {trained.path} ({trained.arch}): {params:,} parameters ({params * 4 / 2**20:.2f} MB fp32)")
    log(f"{trained.note}\n{trained.profile.describe()}")
    rows = []
    for name in dict.fromkeys(session.args.backend):
        log(f"-- backend {name}")
        rows += measure_backend(session, trained, model, name, log)
    return rows


def measure_backend(session: Session, trained: TrainedModel, model: nn.Module, name: str, log=print) -> list[dict]:
    """One model with one backend (backends.BACKENDS): its rows, appended to the sheet."""
    args, profile = session.args, trained.profile
    onnx = backend = None
    if name == "onnxruntime":
        backend = backends.OnnxBackend(model, trained.path, session.device, session.threads, log)
    elif args.export_onnx:  # at the first --resolution (the profile's image size without one)
        hw = parse_resolution(args.resolution[0]) if args.resolution else profile.image_hw
        onnx = export_onnx_form(model, args.export_onnx, hw, session.threads, log)
    val_set, sets = session.accuracy_sets(trained)
    result = evaluate_model(
        model,
        measured_sizes(profile, args.resolution),
        session.device,
        session.dtype,
        val_set,
        args.compile,
        args.agreement_images,
        args.batch_size,
        args.num_workers,
        args.latency_runs,
        args.min_seconds,
        args.warmup,
        trained.classes.num_classes,
        fallback=args.deploy_dtype == "auto",
        log=log,
        scope=session.scope,
        onnx=onnx,
        accuracy_sets=sets,
        backend=backend,
    )
    print_accuracies(result, trained, args.val_resolution, log)
    date = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    context = (session.device, session.threads, session.allocator, date, session.command)
    rows = csv_rows(
        result,
        trained.path.stem,
        trained.arch,
        profile,
        *context,
        val_resolution=args.val_resolution,
        classes=trained.classes,
        backend=name,
    )
    session.csv_path.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:  # written model by model: an interrupted --all keeps what it measured
        append_csv_row(session.csv_path, row)
    return rows


def measure_models(args, models, device: torch.device, csv_path: Path, command: str, log: Callable = print) -> list:
    """Measure every model into the sheet at `csv_path`; prints the sheet of this run's rows at the end."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, scope, why = deploy.choose_deploy_dtype(device, args.deploy_dtype)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    session = Session(args, device, command, csv_path, dtype, scope, threads, describe_allocator(), {})
    backends.check_backend(args.backend, device)
    log(f"device {device} ({device_name(device)}) | deploy: {why}")
    if "onnxruntime" in args.backend:
        log(backends.describe_providers())
    if threads:
        log(f"CPU latency with {threads} threads (torch.get_num_threads), allocator: {session.allocator}")
    rows = []
    for trained, model in models:
        rows += measure_one(session, trained, model, log)
    log("\n" + format_sheet(rows))
    log(f"appended {len(rows)} row(s) to {csv_path}")
    return rows
