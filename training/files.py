"""Atomic files: a reader never sees a half-written checkpoint, state file or CSV, and the previous one survives.

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over the target
(`os.replace`, atomic on POSIX), and the folder is fsync'ed so the rename itself survives a crash. A failure
(full disk, unwritable folder) removes the temporary file and leaves the previous file untouched. A process killed
between the write and the rename leaves only its hidden temporary `.<name>.<random>.tmp`, never a partial <name>;
the next stage of the same experiment removes such leftovers.

Test hook: FASTSCNN_TEST_SLOW_WRITE=<seconds> sleeps between writing the temporary file and the rename.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from training.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own 0600 would hide results from a group

# Tests slow the window between writing and renaming to kill a process inside it (seconds).
_TEST_SLOW_WRITE = float(os.environ.get("FASTSCNN_TEST_SLOW_WRITE", "0") or 0)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write `path` through `write(file)` atomically; an OSError becomes a UserError naming the path."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _FILE_MODE)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if _TEST_SLOW_WRITE:
            time.sleep(_TEST_SLOW_WRITE)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError after the OSError
        cause = error
        while not isinstance(cause, OSError) and cause.__context__ is not None:
            cause = cause.__context__
        if not isinstance(cause, OSError):
            raise
        raise UserError(
            f"cannot write {path}: {cause.strerror or cause} (the previous file, if any, is unchanged)"
        ) from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def check_writable(folder: str | Path) -> None:
    """Create `folder` if needed and make sure a file can be written in it; a UserError naming it if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write in {folder}/: it is a file, expected a folder (nothing was written)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as file:
            file.write(b"probe")
            file.flush()
    except OSError as error:
        raise UserError(
            f"cannot write in {folder}/: {error.strerror or error} (expected a writable folder; nothing was written)"
        ) from None


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove the temporary files that writers of `path` killed before their rename left behind."""
    path = Path(path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def save_torch(obj, path: str | Path) -> None:
    atomic_write(path, lambda file: torch.save(obj, file))


def save_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda file: file.write(data))


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append `row` to a CSV file (header from the row's keys when the file is new), rewriting it atomically.

    New columns in `row` extend the header; existing rows keep empty cells for them.
    """
    path = Path(path)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):  # stages of concurrent runs may finish at the same moment: no row may be lost
        _append_csv_row(path, row)


@contextlib.contextmanager
def _locked(folder: Path):
    """An advisory lock on `folder` itself (none where the file system has no locks: then the write is unlocked)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _append_csv_row(path: Path, row: dict) -> None:
    rows, header = [], list(row)
    if path.exists():
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = list(reader.fieldnames or []) + [k for k in row if k not in (reader.fieldnames or [])]
    rows.append({k: ("" if v is None else v) for k, v in row.items()})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    save_bytes(text.getvalue().encode("utf-8"), path)
