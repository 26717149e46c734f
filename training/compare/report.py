"""The comparison's report: OUT/summary.csv (one row per arm, results.COLUMNS), OUT/comparison.png (validation mIoU
against cumulative training compute and against wall time, one curve per arm, the 95% target dashed) and a table on
the terminal."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from training.compare.results import COLUMNS, ArmResult, summary_rows, target_miou
from training.files import save_bytes

SUMMARY_FILE = "summary.csv"
FIGURE_FILE = "comparison.png"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(output_dir: Path, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row[key]) for key in COLUMNS})
    path = Path(output_dir) / SUMMARY_FILE
    save_bytes(buffer.getvalue().encode("utf-8"), path)
    return path


def draw_figure(output_dir: Path, plan: dict, results: list[ArmResult]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    target = target_miou(results)
    for result in results:
        tflop = [p.tflop for p in result.points]
        seconds = [p.seconds for p in result.points]
        miou = [100 * p.miou for p in result.points]
        label = f"{result.name} ({'+'.join(map(str, result.epochs))} epochs)"
        axes[0].plot(tflop, miou, marker=".", label=label)
        axes[1].plot(seconds, miou, marker=".", label=label)
    for axis, xlabel in zip(axes, ("cumulative training compute (TFLOP)", "cumulative wall time (s)")):
        if not math.isnan(target):
            axis.axhline(100 * target, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("validation mIoU (%), labels' full resolution")
    axes[0].legend(fontsize=8)
    budget = plan["budget"]
    amount = f"{budget['amount'] / 1e12:.4g} TFLOP" if budget["kind"] == "compute" else f"{budget['amount']:.0f} s"
    figure.suptitle(
        f"{plan['comparison']}: equal {budget['kind'].replace('-', ' ')} ({amount}); dashed: 95% of the "
        f"best arm's best",
        fontsize=10,
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    path = Path(output_dir) / FIGURE_FILE
    save_bytes(buffer.getvalue(), path)
    return path


def table(rows: list[dict]) -> str:
    """The summary as a Markdown table (what the terminal shows and docs/comparisons.md quotes)."""
    head = "| arm | epochs | train TFLOP | wall time (s) | best mIoU (%) | budget deviation | TFLOP to 95% of best |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for row in rows:
        to_target = f"{row['tflop_to_95']:.3g}" if row["tflop_to_95"] != "" else "not reached"
        lines.append(
            f"| {row['arm']} | {row['epochs']} | {row['train_tflop']:.3g} | {row['wall_time_s']:.0f} | "
            f"{100 * row['best_miou']:.1f} | {row['deviation_pct']:+.1f}% | {to_target} |"
        )
    return "\n".join(lines)


def write_report(output_dir: Path, plan: dict, results: list[ArmResult]) -> tuple[Path, Path, str]:
    rows = summary_rows(plan, results)
    return write_summary(output_dir, rows), draw_figure(output_dir, plan, results), table(rows)
