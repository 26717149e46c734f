"""Graphs and one report of everything trained and measured here: `python -m training.report`.

Reads checkpoints/<id>/history.csv (one row per epoch) and state.pth (the best epoch's confusion matrix),
measurements/durations.csv and measurements/efficiency.csv; writes PNGs to measurements/graphs/ and
measurements/report.md, which shows them:
- per run, its stages as one curriculum timeline: training loss(es) and validation mIoU against the cumulative
  epoch, stage boundaries and profiles marked;
- seconds per epoch and wall time per stage and run (durations.csv);
- mIoU against GFLOPs and against latency for every efficiency.csv row that has an mIoU, labelled by model;
- the row-normalised confusion matrix of one experiment's best epoch and its per-class IoU.

Runs: an id of the registry (`[prefix]fastscnn-training-experiment-NN`) belongs to the run and stage whose run file
(runs/, training/cluster/runs.py) declares it, or by the id scheme to run (NN - 1) // 5 + 1, stage (NN - 1) % 5 + 1;
any other id ending in a number (`demo-teacher-02`) to the run named by what precedes the number,
stage that number; an id without one is a run of one stage. Every function that draws returns its Figure, so tests
can read what was plotted.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from training.cluster.runs import ID_PREFIX, STAGES_PER_RUN, find_stage, load_registry  # noqa: E402
from training.engine.history import FILE_NAME, read_history  # noqa: E402
from training.errors import UserError, run_cli  # noqa: E402
from training.files import save_bytes  # noqa: E402

REGISTRY_ID = re.compile(rf"^(?P<prefix>.*?)(?P<id>{ID_PREFIX}(?P<number>\d+))$")
NUMBERED_ID = re.compile(r"^(?P<prefix>.*?)[-_]?(?P<number>\d+)$")


@functools.cache
def _registry() -> dict:
    """The run files (runs/), read once; a report does not stop for a broken one."""
    try:
        return load_registry()
    except UserError as error:
        print(f"warning: {error}; runs are named by their numbers only")
        return {}


def run_of(experiment_id: str) -> tuple[str, int]:
    """(run name, stage number) of an experiment id (see the module docstring)."""
    match = REGISTRY_ID.match(experiment_id)
    if match:
        found = find_stage(match["id"], _registry())
        if found is not None:
            run, stage = found
            return f"{match['prefix']}{run.label()}", stage
        number = int(match["number"])  # an id of the scheme that no run file declares (yet)
        return f"{match['prefix']}run {(number - 1) // STAGES_PER_RUN + 1}", (number - 1) % STAGES_PER_RUN + 1
    match = NUMBERED_ID.match(experiment_id)
    if match and match["prefix"]:
        return match["prefix"], int(match["number"])
    return experiment_id, 1


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class StageRecord:
    experiment_id: str
    stage: int
    rows: list[dict]
    profile: str = ""
    script: str = ""
    best_matrix: np.ndarray | None = None  # the best epoch's confusion matrix (rows ground truth), from state.pth
    best_epoch: int = -1
    class_names: list[str] = field(default_factory=list)  # the data set's classes, from state.pth (else Cityscapes')

    def column(self, name: str) -> np.ndarray:
        return np.array([_float(row.get(name)) for row in self.rows])

    @property
    def epochs(self) -> np.ndarray:
        return np.array([int(row["epoch"]) for row in self.rows])


@dataclass
class Run:
    name: str
    stages: list[StageRecord] = field(default_factory=list)


def load_stages(checkpoints: Path) -> list[StageRecord]:
    """Every experiment under `checkpoints` with a history.csv, with what its state.pth says about it."""
    import torch

    records = []
    for path in sorted(Path(checkpoints).glob(f"*/{FILE_NAME}")):
        experiment_id = path.parent.name
        rows = read_history(path)
        if not rows:
            continue
        record = StageRecord(experiment_id, run_of(experiment_id)[1], rows, profile=rows[-1].get("profile", ""))
        state_path = path.parent / "state.pth"
        if state_path.exists():
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as error:  # a report never stops for one unreadable file
                print(f"warning: {state_path}: unreadable ({type(error).__name__}); no confusion matrix for it")
            else:
                record.script = str(state.get("script", ""))
                record.profile = record.profile or str(dict(state.get("args", {})).get("profile", ""))
                record.best_epoch = int(state.get("best_epoch", -1))
                if state.get("best_confusion_matrix") is not None:
                    record.best_matrix = state["best_confusion_matrix"].numpy()
                record.class_names = _class_names(state, record.best_matrix)
        records.append(record)
    return records


def _class_names(state: dict, matrix: np.ndarray | None) -> list[str]:
    """The names of the classes a state's stage trained on: its `classes` entry (ClassSet.to_dict()), or Cityscapes'
    for states written before other data sets; 'class i' where they do not fit the matrix."""
    from training.data.dataset import CLASS_NAMES

    entry = state.get("classes")
    names = list(entry.get("classes", [])) if isinstance(entry, dict) else list(CLASS_NAMES)
    if matrix is not None and len(names) != matrix.shape[0]:
        names = [f"class {i}" for i in range(matrix.shape[0])]
    return names


def group_runs(records: list[StageRecord]) -> list[Run]:
    runs: dict[str, Run] = {}
    for record in records:
        runs.setdefault(run_of(record.experiment_id)[0], Run(run_of(record.experiment_id)[0])).stages.append(record)
    for run in runs.values():
        run.stages.sort(key=lambda r: (r.stage, r.experiment_id))
    return [runs[name] for name in sorted(runs)]


def read_csv(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def loss_columns(records: list[StageRecord]) -> list[str]:
    """The training-loss columns (train_loss, or a script's parts such as train_ce_loss), in order of appearance."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(k for k in record.rows[0] if k.startswith("train_") and k.endswith("loss")))
    return list(names)


# ------------------------------------------------------------------------------------------------------- figures


def curriculum_figure(run: Run) -> Figure:
    """Training loss(es) and validation mIoU of a run's stages against the cumulative epoch, stages marked."""
    fig, (loss_ax, miou_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), constrained_layout=True)
    # each row takes a slot: epochs 1..E at offset + 1..E; a test-resolution stage's epoch-0 row (its recalibration,
    # before any epoch) a slot of its own before them
    offsets, offset = [], 0
    for record in run.stages:
        offsets.append(offset - int(record.epochs.min()) + 1)
        offset += int(record.epochs.max()) - int(record.epochs.min()) + 1
    for name in loss_columns(run.stages):
        x = np.concatenate([o + r.epochs for o, r in zip(offsets, run.stages)])
        y = np.concatenate([r.column(name) for r in run.stages])
        loss_ax.plot(x, y, marker=".", label=name)
    x = np.concatenate([o + r.epochs for o, r in zip(offsets, run.stages)])
    miou_ax.plot(
        x,
        np.concatenate([r.column("valid_miou") for r in run.stages]),
        marker=".",
        color="tab:green",
        label="valid_miou",
    )
    for start, record in zip(offsets, run.stages):
        first = start + int(record.epochs.min())  # the stage's first slot
        if first > 1:
            for ax in (loss_ax, miou_ax):
                ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=0.8)
        label = f"stage {record.stage}" + (f"\n{record.profile}" if record.profile else "")
        loss_ax.annotate(
            label,
            xy=(first - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="dimgrey",
        )
        if record.best_epoch in list(record.epochs):  # epoch 0: a test-resolution stage's recalibrated model
            best = record.column("valid_miou")[list(record.epochs).index(record.best_epoch)]
            miou_ax.plot([start + record.best_epoch], [best], "*", color="tab:red", markersize=10)
    miou_ax.set_xlim(0.5, offset + 0.5)  # every stage label inside the axes
    miou_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("training loss (epoch mean)")
    if loss_ax.get_legend_handles_labels()[0]:  # no legend where no stage logged a training loss
        loss_ax.legend(fontsize=8, loc="upper right")
    miou_ax.set_ylabel("validation mIoU")
    miou_ax.set_xlabel("cumulative epoch (stars: each stage's best epoch, the model the next stage starts from)")
    loss_ax.set_title(f"{run.name}: " + ", ".join(r.experiment_id for r in run.stages), fontsize=9)
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
    return fig


def durations_figure(rows: list[dict]) -> Figure:
    """Seconds per epoch of every stage (grouped by run, x = stage) and each run's wall time, stacked by stage."""
    latest = {row["experiment_id"]: row for row in rows}  # a stage trained again: its last row
    runs: dict[str, dict[int, dict]] = {}
    for experiment_id, row in latest.items():
        name, stage = run_of(experiment_id)
        runs.setdefault(name, {})[stage] = row
    names = sorted(runs)
    fig, (per_epoch, total) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        stages = sorted(runs[name])
        per_epoch.bar(
            [s + (i - (len(names) - 1) / 2) * width for s in stages],
            [_float(runs[name][s]["s_per_epoch"]) for s in stages],
            width,
            label=name,
        )
        bottom = 0.0
        for s in stages:
            seconds = _float(runs[name][s]["wall_time_s"])
            total.bar(
                i,
                seconds,
                0.6,
                bottom=bottom,
                color=plt.cm.viridis((s - 1) / 4 if s <= 5 else 1.0),
                edgecolor="white",
                label=f"stage {s}" if i == 0 or s not in runs[names[0]] else None,
            )
            bottom += seconds
    stages_all = sorted({s for run in runs.values() for s in run})
    profiles = {s: next((runs[n][s]["profile"] for n in names if s in runs[n]), "") for s in stages_all}
    per_epoch.set_xticks(stages_all, [f"{s}\n{profiles[s]}" for s in stages_all])
    per_epoch.set_xlabel("stage (profile)")
    per_epoch.set_ylabel("seconds per epoch")
    per_epoch.set_title("training gets harder: s/epoch per stage", fontsize=10)
    per_epoch.legend(fontsize=7)
    total.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    total.set_ylabel("wall time (s)")
    total.set_title("wall time per run, stacked by stage", fontsize=10)
    total.legend(fontsize=7)
    return fig


def efficiency_points(rows: list[dict]) -> list[dict]:
    """The efficiency.csv rows that have an mIoU, as numbers (GFLOPs = flops / 1e9)."""
    points = []
    for row in rows:
        miou = _float(row.get("miou"))
        if math.isnan(miou):
            continue
        points.append(
            {
                "label": f"{row['model']} @ {row['resolution']}",
                "miou": miou,
                "gflops": _float(row.get("flops")) / 1e9,
                "plain_ms": _float(row.get("latency_ms_plain")),
                "deploy_ms": _float(row.get("latency_ms_deploy")),
                "onnxruntime_ms": _float(row.get("latency_ms_onnxruntime")),
            }
        )
    return points


def efficiency_figure(points: list[dict]) -> Figure:
    """mIoU against GFLOPs, and against latency (plain, deploy, ONNX Runtime where timed), one label per row."""
    fig, (cost_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    cost_ax.scatter([p["gflops"] for p in points], [p["miou"] for p in points], color="tab:blue", label="model")
    for form, marker in (("plain_ms", "o"), ("deploy_ms", "^"), ("onnxruntime_ms", "s")):
        shown = [p for p in points if not math.isnan(p[form])]
        if shown:
            time_ax.scatter(
                [p[form] for p in shown],
                [p["miou"] for p in shown],
                marker=marker,
                label=form.removesuffix("_ms").replace("onnxruntime", "ONNX Runtime"),
            )
    for p in points:  # one row's forms joined: the same model and size, timed side by side
        times = [p[form] for form in ("plain_ms", "deploy_ms", "onnxruntime_ms") if not math.isnan(p[form])]
        if times:
            time_ax.plot(times, [p["miou"]] * len(times), color="lightgrey", linewidth=1, zorder=0)
    for ax, values in (
        (cost_ax, [p["gflops"] for p in points]),
        (time_ax, [p[f] for p in points for f in ("plain_ms", "deploy_ms", "onnxruntime_ms")]),
    ):
        values = [v for v in values if v > 0]
        if values and max(values) > 5 * min(values):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15, y=0.15)
    _label_points(cost_ax, [(p["gflops"], p["miou"], p["label"]) for p in points])
    forms = ("plain_ms", "deploy_ms", "onnxruntime_ms")
    timed = [
        (min(p[f] for f in forms if not math.isnan(p[f])), p)
        for p in points
        if any(not math.isnan(p[f]) for f in forms)
    ]
    _label_points(time_ax, [(t, p["miou"], p["label"]) for t, p in timed])
    cost_ax.set_xlabel("GFLOPs (2 x thop MACs, batch 1, at the row's resolution)")
    time_ax.set_xlabel("latency, ms (median, batch 1, at the row's resolution)")
    for ax in (cost_ax, time_ax):
        ax.set_ylabel("validation mIoU (at the row's eval size)")
        ax.grid(alpha=0.3)
    time_ax.legend(fontsize=8)
    return fig


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Label each point beside it, on the side with room (right of it in the left half of the axes, else left)."""
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    seen: dict[float, int] = {}
    for x, y, label in points:
        right = to_axes.transform((x, y))[0] < 0.5
        level = seen[y] = seen.get(y, -1) + 1  # rows of the same mIoU (one model at several sizes): stacked labels
        ax.annotate(
            label,
            (x, y),
            fontsize=7,
            xytext=(5 if right else -5, 4 - 10 * level),
            textcoords="offset points",
            ha="left" if right else "right",
            annotation_clip=True,
            clip_on=True,
        )


def confusion_figure(experiment_id: str, matrix: np.ndarray, class_names: list[str]) -> Figure:
    """The confusion matrix with each ground-truth row divided by its pixel count (rows without pixels blank)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.full_like(matrix, np.nan), where=totals > 0)
    fig, ax = plt.subplots(figsize=(9, 8), constrained_layout=True)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in ticks:
        for j in ticks:
            if normalised[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{100 * normalised[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if normalised[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the ground-truth class's pixels")
    ax.set_title(f"{experiment_id}: best epoch's confusion matrix (rows normalised, %)", fontsize=10)
    return fig


def class_iou(matrix: np.ndarray) -> list[float]:
    import torch

    from training.metrics import ConfusionMatrix

    confusion = ConfusionMatrix(len(matrix))
    confusion.matrix = torch.as_tensor(np.asarray(matrix), dtype=torch.int64)
    return confusion.compute()["iou"]


def class_iou_figure(experiment_id: str, matrix: np.ndarray, class_names: list[str]) -> Figure:
    """Per-class IoU of the best epoch (from its confusion matrix); classes absent from it are left out."""
    iou = class_iou(matrix)
    shown = [(name, value) for name, value in zip(class_names, iou) if not math.isnan(value)]
    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    ax.bar([name for name, _ in shown], [value for _, value in shown], color="tab:blue")
    miou = float(np.nanmean(iou)) if shown else math.nan
    ax.axhline(miou, color="tab:red", linestyle="--", linewidth=1, label=f"mIoU {miou:.3f}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.tick_params(axis="x", rotation=90, labelsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"{experiment_id}: per-class IoU at the best epoch", fontsize=10)
    return fig


# -------------------------------------------------------------------------------------------------------- report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _save(fig: Figure, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    save_bytes(buffer.getvalue(), path)
    return path


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    ]


def build_report(
    checkpoints: Path, measurements: Path, output: Path | None = None, experiment: str | None = None
) -> dict[str, Path]:
    """Write the graphs and report.md; returns {what: path} of every file written."""
    measurements = Path(measurements)
    graphs = Path(output) if output else measurements / "graphs"
    records = load_stages(Path(checkpoints))
    durations = read_csv(measurements / "durations.csv")
    efficiency = read_csv(measurements / "efficiency.csv")
    chosen = _chosen_experiment(records, experiment)  # a bad --experiment stops before anything is written
    written: dict[str, Path] = {}
    place = _Place(graphs, measurements, written)
    md = [
        "# Report",
        "",
        f"Generated by `python -m training.report` from `{checkpoints}/*/history.csv`, "
        f"`{measurements}/durations.csv` and `{measurements}/efficiency.csv`.",
        "",
    ]
    md += _curriculum_section(group_runs(records), checkpoints, place)
    md += _durations_section(durations, place)
    md += _efficiency_section(efficiency, place)
    md += _confusion_section(chosen, experiment, place)
    report = measurements / "report.md"
    save_bytes("\n".join(md).encode("utf-8"), report)
    written["report"] = report
    return written


class _Place:
    """Where the report's figures go (graphs/), what their links are relative to, and the record of what was written."""

    def __init__(self, graphs: Path, measurements: Path, written: dict[str, Path]):
        self.graphs, self.measurements, self.written = graphs, measurements, written

    def figure(self, key: str, figure, name: str, alt: str) -> list[str]:
        """Save `figure` as graphs/<name>, record it under `key`; the Markdown lines that show it."""
        path = _save(figure, self.graphs / name)
        self.written[key] = path
        return [f"![{alt}]({_link(path, self.measurements)})", ""]


def _curriculum_section(runs, checkpoints: Path, place: _Place) -> list[str]:
    md = ["## Curriculum timelines", ""]
    if not runs:
        md += [f"No `{FILE_NAME}` under `{checkpoints}/`: no stage has trained here yet.", ""]
    for run in runs:
        md += [f"### {run.name}", ""]
        md += place.figure(
            f"curriculum:{run.name}", curriculum_figure(run), f"curriculum-{_slug(run.name)}.png", run.name
        )
        md += _table(
            ["stage", "experiment", "profile", "epochs", "best mIoU", "best epoch", "last train loss"],
            [
                [
                    r.stage,
                    r.experiment_id,
                    r.profile,
                    int(r.epochs.max()),
                    f"{np.nanmax(r.column('valid_miou')):.4f}",
                    r.best_epoch if r.best_epoch in list(r.epochs) else "",
                    ", ".join(f"{n} {r.column(n)[-1]:.4f}" for n in loss_columns([r])),
                ]
                for r in run.stages
            ],
        )
        md.append("")
    return md


def _durations_section(durations: list[dict], place: _Place) -> list[str]:
    md = ["## Durations", ""]
    if not durations:
        return md + [f"No `{place.measurements}/durations.csv` yet.", ""]
    md += place.figure("durations", durations_figure(durations), "durations.png", "durations")
    latest = {row["experiment_id"]: row for row in durations}
    md += _table(
        ["run", "stage", "experiment", "profile", "epochs", "wall time (s)", "s/epoch", "device", "best mIoU"],
        [
            [*run_of(i), i, r["profile"], r["epochs"], r["wall_time_s"], r["s_per_epoch"], r["device"], r["best_miou"]]
            for i, r in sorted(latest.items(), key=lambda item: run_of(item[0]))
        ],
    )
    return md + [""]


def _efficiency_section(efficiency: list[dict], place: _Place) -> list[str]:
    md = ["## Efficiency", ""]
    points = efficiency_points(efficiency)
    if points:
        md += place.figure("efficiency", efficiency_figure(points), "efficiency.png", "efficiency")
        md += _table(
            ["model @ resolution", "mIoU", "GFLOPs", "plain ms", "deploy ms", "ONNX Runtime ms"],
            [
                [
                    p["label"],
                    f"{p['miou']:.4f}",
                    f"{p['gflops']:.2f}",
                    _ms(p["plain_ms"]),
                    _ms(p["deploy_ms"]),
                    _ms(p["onnxruntime_ms"]),
                ]
                for p in points
            ],
        )
        md.append("")
    skipped = len(efficiency) - len(points)
    if not efficiency:
        md += [f"No `{place.measurements}/efficiency.csv` yet.", ""]
    elif skipped:
        md += [
            f"{skipped} row(s) of efficiency.csv have no mIoU (measured with `--data-dir none`) and are not plotted.",
            "",
        ]
    return md


def _confusion_section(chosen: StageRecord | None, experiment: str | None, place: _Place) -> list[str]:
    md = ["## Confusion matrix and per-class IoU", ""]
    if chosen is None:
        return md + ["No state.pth with a best confusion matrix yet.", ""]
    slug, names = _slug(chosen.experiment_id), chosen.class_names
    md += [
        f"`{chosen.experiment_id}`, best epoch {chosen.best_epoch}"
        + ("" if experiment else " (the highest validation mIoU here; `--experiment ID` chooses another)"),
        "",
    ]
    md += place.figure(
        "confusion",
        confusion_figure(chosen.experiment_id, chosen.best_matrix, names),
        f"confusion-{slug}.png",
        "confusion matrix",
    )
    md += place.figure(
        "class_iou",
        class_iou_figure(chosen.experiment_id, chosen.best_matrix, names),
        f"class-iou-{slug}.png",
        "per-class IoU",
    )
    return md


def _chosen_experiment(records: list[StageRecord], experiment: str | None) -> StageRecord | None:
    """The stage whose best confusion matrix is shown: `experiment`, or the one with the highest validation mIoU."""
    with_matrix = [r for r in records if r.best_matrix is not None]
    if experiment:
        chosen = next((r for r in with_matrix if r.experiment_id == experiment), None)
        if chosen is None:
            raise UserError(
                f"--experiment {experiment}: no checkpoints/{experiment}/state.pth with a best confusion "
                f"matrix (expected one of: {', '.join(r.experiment_id for r in with_matrix) or 'none'})"
            )
        return chosen
    return max(with_matrix, key=lambda r: np.nanmax(r.column("valid_miou")), default=None)


def _link(path: Path, measurements: Path) -> str:
    """The image's path as report.md (in `measurements`) refers to it."""
    try:
        return path.resolve().relative_to(measurements.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _ms(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoints", default="checkpoints", help="folder of checkpoints/<id>/ (history.csv)")
    parser.add_argument(
        "--measurements", default="measurements", help="folder of durations.csv and efficiency.csv; report.md goes here"
    )
    parser.add_argument("--output", help="folder for the PNGs (default: <measurements>/graphs)")
    parser.add_argument("--experiment", help="experiment id whose confusion matrix is shown (default: best mIoU)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    args = parser.parse_args(argv)
    if not Path(args.checkpoints).is_dir() and not Path(args.measurements).is_dir():
        raise UserError(
            f"--checkpoints {args.checkpoints} and --measurements {args.measurements}: neither is a "
            f"folder (expected the folders a training stage writes; run from the repository)"
        )
    written = build_report(
        Path(args.checkpoints), Path(args.measurements), args.output and Path(args.output), args.experiment
    )
    for what, path in written.items():
        print(f"wrote {path} ({what})")


if __name__ == "__main__":
    run_cli(main)
