"""checkpoints/<id>/history.csv: one row per finished epoch of a stage, with every value the stage logs.

The file is rewritten atomically at each epoch (training/files.py), right after the resumable state, which holds
the same row: at the start of the stage `truncate` drops the rows of epochs the state does not hold (a file left by
an earlier run, or `--restart`) and puts back the state's row if the file lacks it (a kill between the two writes),
and a rerun's row replaces any row of its epoch or later. After a stop by a signal or a kill and a rerun, the file
holds each epoch once. The header is the union of the rows' keys in order of
first appearance: values that only some epochs have (a class seen late, loss parts other code adds) get a column
when they first come, and earlier rows keep an empty cell there.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from pathlib import Path

from training.files import remove_stale_temporaries, save_bytes

FILE_NAME = "history.csv"


def history_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE_NAME


def read_history(path: str | Path) -> list[dict[str, str]]:
    """The rows of a history.csv as dicts of strings (empty list when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))  # shortest text that reads back to the same float
    return str(value)


def _write(path: Path, rows: list[dict]) -> None:
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(header), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    save_bytes(text.getvalue().encode("utf-8"), path)


def record_epoch(path: str | Path, values: dict) -> None:
    """Add the row of epoch `values["epoch"]`, dropping rows of that epoch and later ones, and rewrite the file.

    Only numbers and strings are kept (images and other logged objects are not values of a table).
    """
    epoch = int(values["epoch"])
    row = {key: _cell(value) for key, value in values.items() if isinstance(value, (numbers.Number, str))}
    rows = [old for old in read_history(path) if int(old["epoch"]) < epoch]
    _write(Path(path), rows + [row])


def truncate(path: str | Path, last_epoch: int, last_row: dict | None = None) -> None:
    """Drop the rows after `last_epoch` (the epoch a resumed state holds; 0 for a stage started afresh), and the
    temporaries of killed writes; add `last_row` (the state's row of `last_epoch`) where the file lacks it."""
    path = Path(path)
    remove_stale_temporaries(path)  # what a writer killed before its rename left behind
    rows = read_history(path)
    kept = [row for row in rows if int(row["epoch"]) <= last_epoch]
    if last_row and int(last_row["epoch"]) == last_epoch and not any(int(r["epoch"]) == last_epoch for r in kept):
        record_epoch(path, last_row)
    elif len(kept) != len(rows):
        if kept:
            _write(path, kept)
        else:
            path.unlink()
