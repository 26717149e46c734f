"""Per-profile cache of the data set: images and train ids stored once, already resized to a profile's image size.

Decoding a 2048x1024 PNG costs ~40 ms and its resize another ms or two; a cached 576x288 sample is read in ~0.1 ms.
For each profile and split the cache holds two uncompressed arrays, read through memory maps by the loader workers:

    <dir>/<profile>-<W>x<H>/<split>/images.npy   uint8 N x 3 x H x W (the profile's image size)
                                    labels.npy   uint8 N x H x W train ids (void 255), resized by nearest neighbour
                                    manifest.json

`<dir>` is, in this order: `<--cache-dir DIR>/<data dir name>-<hash of its path>` (the scripts' flag, `cache_dir`
here), else `$FASTSCNN_CACHE_DIR/<data dir name>-<hash>` (the flag wins over the variable; each holds one folder per
data set), else `<data dir>/.cache` where the data dir is writable (or already holds a valid cache), else
`data/cache/<data dir name>-<hash>` under the working directory. The manifest records the cache version,
the torch/torchvision versions (the resize kernels), the profile, the split and every source file with its size and
mtime; it is written last, with `"complete": true`, after the arrays are on disk. A build that was killed leaves no
manifest or an incomplete one, and is redone; a changed source file (size or mtime) is re-read on the next start.

Building reads the PNGs in a process pool (one process per available core, see training/data/workers.py: the
workers ignore the stage's stop signals and the pool ends by waiting for them) with a progress bar. Processes
that start together (the ranks of a distributed stage, or jobs sharing a data set) serialise on a file lock: the
first builds, the others wait and then use its result. Every file is replaced atomically, so even without working
locks (some network file systems, or Lustre's `localflock` between nodes) concurrent builders only duplicate work:
a builder's temporary files carry its host name and pid (`images.<host>.<pid>.tmp.npy`), and a builder removes
only stale ones (of a dead process on its own host, or untouched for STALE_AFTER_S; a live builder touches its
own every HEARTBEAT_S), never those of a builder still at work on another node.

Room: before a build, the bytes it will write (computed exactly from the sample count and the sizes: N x 3 x H x W
images and N x H x W labels, plus the .npy headers) are checked against the free space of the target file system
(`check_room`, with a margin of ROOM_MARGIN for the manifests), and a cache that does not fit is refused with one
line (UserError) before anything is created. The arrays are then preallocated (`posix_fallocate`), so a quota or a
disk that fills meanwhile fails at once, and written with `pwrite`, never through a memory map: a full disk or quota
is an OSError (ENOSPC, EDQUOT), where a write through a memory map is a SIGBUS that kills the writer. A write error, or
a helper process that dies, ends the build with one line as well, and the split's half-built cache is removed.

A cached sample is exactly the output of `training.data.images.resize(profile)` on the uncached one, and that resize is
the first op of the training and validation transforms (a no-op on an image already at the size): cached and
uncached samples are identical, augmentations included.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import tv_tensors
from torchvision.io import ImageReadMode

from training.data.images import read_png, read_train_ids, resize
from training.data.layouts import SampleReader
from training.data.workers import map_in_helpers
from training.errors import UserError
from training.profiles import Profile

CACHE_VERSION = 1
MANIFEST = "manifest.json"
FALLBACK_DIR = Path("data/cache")  # relative to the working directory (the repository root for the scripts)
STALE_AFTER_S = 3600  # a temporary file untouched this long belongs to a builder that is gone
HEARTBEAT_S = 60  # how often a builder touches its temporary files
ENV_CACHE_DIR = "FASTSCNN_CACHE_DIR"  # where caches go when --cache-dir is not given
ROOM_MARGIN = 8 * 2**20  # beyond the arrays: the manifests (~1 MB for Cityscapes' train split), the lock, fs blocks
WAYS_OUT = (
    "put the cache elsewhere with --cache-dir DIR (or the environment variable FASTSCNN_CACHE_DIR=DIR), "
    "or run without it with --no-cache"
)
_TEMPORARY = re.compile(r"^(?:images|labels|manifest\.json)\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp(?:\.npy)?$")


def profile_key(profile: Profile) -> str:
    return f"{profile.name}-{profile.image_size[0]}x{profile.image_size[1]}"


def _dataset_folder(root: Path) -> str:
    """`<data dir name>-<hash of its path>`: one data set's folder in a cache folder shared by several."""
    return f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"


def cache_locations(root: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Where a data set's cache may live, in order of preference: `cache_dir` (--cache-dir) or else the environment's
    FASTSCNN_CACHE_DIR, that folder only (one data set's folder in it); neither: next to the data, then data/cache/."""
    root = Path(root).resolve()
    chosen = str(cache_dir) if cache_dir not in (None, "") else os.environ.get(ENV_CACHE_DIR, "")
    if chosen:
        return [Path(chosen).expanduser().resolve() / _dataset_folder(root)]
    return [root / ".cache", (FALLBACK_DIR / _dataset_folder(root)).resolve()]


def _source_stats(images: list[str], labels: list[str]) -> list[list[int]]:
    stats = []
    for image, label in zip(images, labels):
        a, b = os.stat(image), os.stat(label)
        stats.append([a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns])
    return stats


# ---------------------------------------------------------------------------------------------------------- room
def _npy_header(shape: tuple[int, ...]) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": tuple(shape)}


def npy_bytes(shape: tuple[int, ...]) -> int:
    """The size of a uint8 .npy file of `shape` as the cache writes it: numpy's (padded) header, then the data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, _npy_header(shape))
    return header.tell() + math.prod(shape)


def split_bytes(count: int, profile: Profile) -> int:
    """Bytes of one split's cache at `profile`: uint8 images N x 3 x H x W and train ids N x H x W."""
    height, width = profile.image_hw
    return npy_bytes((count, 3, height, width)) + npy_bytes((count, height, width))


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


@dataclass(frozen=True)
class CachePlan:
    """One part of a cache: where it is (or would be written), and the bytes a build would write there now."""

    directory: Path
    needed: int  # 0: ready, only changed entries to re-read, or being written by another live process
    what: str
    ready: bool = False


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_room(plans: Iterable[CachePlan]) -> None:
    """Refuse (UserError, one line) what the plans would write where it does not fit, ROOM_MARGIN included, in the
    free space of its file system (the plans on one file system counted together). Nothing is created here."""
    groups: dict[int, list[CachePlan]] = {}
    for plan in plans:
        if plan.needed > 0:
            groups.setdefault(_nearest_existing(plan.directory).stat().st_dev, []).append(plan)
    for group in groups.values():
        needed = sum(plan.needed for plan in group) + ROOM_MARGIN
        free = shutil.disk_usage(_nearest_existing(group[0].directory)).free
        if needed > free:
            parts = ", ".join(f"{plan.what} {human_bytes(plan.needed)}" for plan in group)
            raise UserError(
                f"cache {group[0].directory.parent.parent}: needs {human_bytes(needed)} ({parts}, "
                f"{human_bytes(ROOM_MARGIN)} spare), {human_bytes(free)} free there; expected room for it: {WAYS_OUT}"
            )


def _writable(directory: Path) -> bool:
    """Whether `directory` is a writable directory or can be created as one (nothing is created here)."""
    existing = _nearest_existing(directory)
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _target(candidates: list[Path]) -> Path:
    """The first candidate where a cache can be written."""
    directory = next((d for d in candidates if _writable(d)), None)
    if directory is None:
        raise UserError(
            f"cache: cannot create any of {', '.join(map(str, candidates))} (expected a writable directory; {WAYS_OUT})"
        )
    return directory


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cache {directory}: cannot create it ({error.strerror}); expected a writable place: {WAYS_OUT}"
        ) from None


def _being_built(directory: Path) -> bool:
    """Whether a live builder (of this host, or recently active on another node) writes in `directory`: its files are
    preallocated, so the room is taken already, and this process will wait for its result."""
    now = time.time()
    return directory.is_dir() and any(
        _TEMPORARY.match(path.name) and not _is_stale(path, now) for path in directory.glob("*.tmp*")
    )


def _create_npy(path: Path, shape: tuple[int, ...]) -> None:
    """An empty uint8 .npy file of `shape`, its blocks reserved: a disk or quota without room fails here, at once."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, _npy_header(shape))
        size = file.tell() + math.prod(shape)
        file.truncate(size)
    if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the writes report a full disk themselves
        fd = os.open(path, os.O_RDWR)
        try:
            _preallocate(fd, size)
        finally:
            os.close(fd)


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # not supported here: write as is
            raise


class _Rows:
    """Writes entries (along the first axis) of a uint8 .npy file with pwrite. A full disk or quota is an OSError
    (ENOSPC, EDQUOT) here, where a write through a memory map would be a SIGBUS that kills the writing process."""

    def __init__(self, path: str | Path):
        array = np.load(path, mmap_mode="r")
        self.offset, self.row_bytes = array.offset, math.prod(array.shape[1:])
        del array
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, index: int, row: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(row, dtype=np.uint8).reshape(-1))
        if len(data) != self.row_bytes:
            raise ValueError(f"an entry of {len(data)} bytes, expected {self.row_bytes}")
        position = self.offset + index * self.row_bytes
        while len(data):
            written = os.pwrite(self.fd, data, position)
            data, position = data[written:], position + written

    def close(self) -> None:
        os.close(self.fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a network file system reports a quota or I/O error here at the latest
    finally:
        os.close(fd)


def _remove_split_cache(directory: Path) -> None:
    for name in ("images.npy", "labels.npy", MANIFEST):
        (directory / name).unlink(missing_ok=True)


def _write_failure(directory: Path, error: BaseException) -> UserError:
    """The one line of a build that failed writing (its half-built cache is removed by the caller); an error that
    names a file outside the cache is the reading of a source file."""
    filename = getattr(error, "filename", None)
    if filename is not None and not Path(filename).resolve().is_relative_to(directory.resolve()):
        return UserError(f"cannot read {filename}: {error.strerror or error}")
    if isinstance(error, BrokenProcessPool):
        cause = "a helper process writing it died (killed: out of memory, a SIGBUS of a full disk or quota, a signal)"
    else:
        name = errno.errorcode.get(getattr(error, "errno", None) or 0, "")
        cause = f"{getattr(error, 'strerror', None) or error}" + (f" ({name})" if name else "")
    return UserError(
        f"cache {directory}: writing it failed: {cause}; the half-built cache was removed. Expected room for it: "
        f"{WAYS_OUT}"
    )


class CachedSplit:
    """Read access to one complete cached split; opens its memory maps lazily in each process."""

    def __init__(self, directory: Path, count: int):
        self.directory, self.count = directory, count
        self._arrays = None
        self._pid = None

    def __getstate__(self):
        return {"directory": self.directory, "count": self.count, "_arrays": None, "_pid": None}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = (
                np.load(self.directory / "images.npy", mmap_mode="r"),
                np.load(self.directory / "labels.npy", mmap_mode="r"),
            )
            self._pid = os.getpid()
        return self._arrays

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image 3xHxW and uint8 train ids HxW at the profile's image size."""
        images, labels = self.arrays()
        return torch.from_numpy(np.array(images[index])), torch.from_numpy(np.array(labels[index]))


def _expected(root: Path, split: str, images: list[str], labels: list[str], profile: Profile) -> dict:
    return {
        "version": CACHE_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "profile": profile.name,
        "image_size": list(profile.image_size),
        "split": split,
        "files": [[os.path.relpath(image, root), os.path.relpath(label, root)] for image, label in zip(images, labels)],
    }


def _read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _arrays_ok(directory: Path, count: int, profile: Profile) -> bool:
    height, width = profile.image_hw
    try:
        images = np.load(directory / "images.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (
        images.dtype == np.uint8
        and images.shape == (count, 3, height, width)
        and labels.dtype == np.uint8
        and labels.shape == (count, height, width)
    )


def check_cache(directory: Path, expected: dict, stats: list[list[int]], profile: Profile) -> tuple[str, list[int]]:
    """("ok", []), ("stale", indices of changed sources) or ("invalid", []) for the cache in `directory`."""
    manifest = _read_manifest(directory)
    if manifest is None or any(manifest.get(k) != v for k, v in expected.items()):
        return "invalid", []
    if not _arrays_ok(directory, len(expected["files"]), profile):
        return "invalid", []
    recorded = manifest.get("stats")
    if not isinstance(recorded, list) or len(recorded) != len(stats):
        return "invalid", []
    stale = [i for i, (old, new) in enumerate(zip(recorded, stats)) if old != new]
    if stale or manifest.get("complete") is not True:
        # An interrupted update of stale entries leaves complete=false with the entries still marked as changed.
        return ("stale", stale) if stale else ("invalid", [])
    return "ok", []


def _temporary_tag() -> str:
    """<host>.<pid>: names this builder's temporary files, unique across the nodes sharing a cache."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _is_stale(path: Path, now: float) -> bool:
    """Whether a temporary file of the cache was left by a builder that is gone (never one at work elsewhere)."""
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    try:
        if now - path.stat().st_mtime > STALE_AFTER_S:
            return True
    except FileNotFoundError:
        return False
    if match["host"] != socket.gethostname():
        return False  # another node's (or an older version's) builder: only its age tells
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files of builders that were killed; returns the removed paths."""
    now = time.time()
    removed = []
    for leftover in directory.glob("*.tmp*"):
        if _is_stale(leftover, now):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f"{path.name}.{_temporary_tag()}.tmp")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path, log):
    """An exclusive lock on `directory/.lock` (waits for a builder in another process); yields whether it is held."""
    with open(directory / ".lock", "a+") as file:
        try:
            import fcntl

            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"cache: waiting for another process building {directory}")
                fcntl.flock(file, fcntl.LOCK_EX)
            held = True
        except OSError as error:  # no locks on this file system: builds stay correct, only duplicated
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            held = False
        except ImportError:
            held = False
        yield held


# ------------------------------------------------------------------------------------------ building (pool workers)
_worker_state: dict = {}


def read_sample(image_path: str, label_path: str, reader: SampleReader | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image 3xHxW and train ids HxW from the files: Cityscapes' PNGs and label ids (no reader), or through
    the layout's reader (CamVid, a folder)."""
    if reader is None:
        return read_png(image_path, ImageReadMode.RGB), read_train_ids(label_path)
    return reader.image(image_path), reader.mask(label_path)


def read_label(label_path: str, reader: SampleReader | None) -> torch.Tensor:
    return read_train_ids(label_path) if reader is None else reader.mask(label_path)


def _init_worker(
    images_path: str, labels_path: str, profile: Profile, reader: SampleReader | None = None, threads: int = 1
) -> None:
    torch.set_num_threads(threads)
    _worker_state.update(images=_Rows(images_path), labels=_Rows(labels_path), resize=resize(profile), reader=reader)


def _cache_one(task: tuple[int, str, str]) -> int:
    index, image_path, label_path = task
    image, mask = read_sample(image_path, label_path, _worker_state["reader"])
    image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
    image, mask = _worker_state["resize"](image, mask)
    _worker_state["images"].write(index, image.numpy())
    _worker_state["labels"].write(index, mask.numpy())
    return index


def _cache_chunk(tasks: list[tuple[int, str, str]]) -> int:
    for task in tasks:
        _cache_one(task)
    return len(tasks)


def _fill(
    images_path: Path,
    labels_path: Path,
    tasks: list,
    profile: Profile,
    workers: int,
    desc: str,
    reader: SampleReader | None = None,
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="img", dynamic_ncols=True, disable=not sys.stderr.isatty())
    args = (str(images_path), str(labels_path), profile, reader)
    touched = time.monotonic()

    def done(count: int) -> None:
        nonlocal touched
        bar.update(count)
        if time.monotonic() - touched > HEARTBEAT_S:  # alive: builders elsewhere leave these files alone
            for path in (images_path, labels_path):
                os.utime(path)
            touched = time.monotonic()

    try:
        if workers <= 1:
            _init_worker(*args, threads=torch.get_num_threads())  # in this process: leave its threads alone
            for task in tasks:
                _cache_one(task)
                done(1)
        else:
            size = max(1, min(16, len(tasks) // (8 * workers)))
            chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
            map_in_helpers(_cache_chunk, chunks, workers, done, initializer=_init_worker, initargs=args)
    finally:
        for name in ("images", "labels"):
            if name in _worker_state:
                _worker_state[name].close()
        _worker_state.clear()
        bar.close()
    for path in (images_path, labels_path):  # the data on disk before the manifest that vouches for it
        _fsync(path)


def _write_arrays(
    directory: Path, tasks: list, profile: Profile, workers: int, what: str, log, reader: SampleReader | None = None
) -> None:
    """The whole split into new arrays, under temporary names until they are complete."""
    count = len(tasks)
    (directory / MANIFEST).unlink(missing_ok=True)
    height, width = profile.image_hw
    tmp = {name: directory / f"{name}.{_temporary_tag()}.tmp.npy" for name in ("images", "labels")}
    try:
        _create_npy(tmp["images"], (count, 3, height, width))
        _create_npy(tmp["labels"], (count, height, width))
        log(
            f"cache: writing {count} {what} to {directory} ({workers} processes, "
            f"{human_bytes(split_bytes(count, profile))}; once per profile)"
        )
        _fill(tmp["images"], tmp["labels"], tasks, profile, workers, f"caching {what}", reader)
        for name, path in tmp.items():  # readers of an older cache keep their (unlinked) files
            os.replace(path, directory / f"{name}.npy")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def _build(
    directory: Path,
    expected: dict,
    images: list[str],
    labels: list[str],
    profile: Profile,
    stale: list[int] | None,
    workers: int,
    log,
    reader: SampleReader | None = None,
) -> None:
    """Write the whole cache (stale is None) or re-read the changed entries; the manifest comes last. A write error
    or a helper that dies: the split's cache is removed and the build ends with one line (UserError)."""
    count = len(images)
    stats = _source_stats(images, labels)  # taken before reading: a file changed meanwhile is caught next time
    what = f"{expected['split']} at {profile_key(profile)}"
    start = time.perf_counter()
    try:
        if stale is None:
            tasks = [(i, image, label) for i, (image, label) in enumerate(zip(images, labels))]
            _write_arrays(directory, tasks, profile, workers, what, log, reader)
        else:
            recorded = _read_manifest(directory)["stats"]
            _write_json(directory / MANIFEST, {**expected, "stats": recorded, "complete": False})
            log(f"cache: {len(stale)} of {count} source files of {what} changed; re-reading them into {directory}")
            tasks = [(i, images[i], labels[i]) for i in stale]
            updating = f"updating {what}"
            _fill(directory / "images.npy", directory / "labels.npy", tasks, profile, workers, updating, reader)
        _write_json(directory / MANIFEST, {**expected, "stats": stats, "complete": True})
    except (OSError, BrokenProcessPool) as error:  # a full disk or quota, an I/O error, a helper that died
        _remove_split_cache(directory)
        raise _write_failure(directory, error) from None
    log(f"cache: {what} ready in {time.perf_counter() - start:.1f} s")


def _default_workers(count: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, count, 32))


def _is_main_process() -> bool:
    from training.runtime.distributed import detect

    return detect().is_main


def _plan(
    root: Path,
    split: str,
    images: list[str],
    labels: list[str],
    profile: Profile,
    cache_dir,
    reader: SampleReader | None = None,
) -> tuple[CachePlan, dict, list[list[int]]]:
    """(where the split's cache at `profile` is or would be written and what a build would write there, the manifest
    expected, the sources' stats). A reader's class set is part of the manifest (none for Cityscapes)."""
    expected = {**_expected(root, split, images, labels, profile), **(reader.manifest() if reader else {})}
    try:
        stats = _source_stats(images, labels)
    except OSError as error:
        raise UserError(f"cannot read {error.filename}: {error.strerror}") from None
    what = f"{split} at {profile_key(profile)}"
    candidates = [base / profile_key(profile) / split for base in cache_locations(root, cache_dir)]
    for directory in candidates:  # a valid cache anywhere (even read-only) is used as it is
        if check_cache(directory, expected, stats, profile)[0] == "ok":
            return CachePlan(directory, 0, what, ready=True), expected, stats
    directory = _target(candidates)
    update = check_cache(directory, expected, stats, profile)[0] == "stale"  # rewrites entries in place
    needed = 0 if update or _being_built(directory) else split_bytes(len(images), profile)
    return CachePlan(directory, needed, what), expected, stats


def prepare_cache(
    root: str | Path,
    split: str,
    images: list[str],
    labels: list[str],
    profile: Profile,
    mode: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    log=None,
    reader: SampleReader | None = None,
) -> CachedSplit | None:
    """The cache of one split at `profile`, built or brought up to date first; None where it is not used.

    mode "auto" (the scripts') caches at every profile: below the sources' size it saves the decoding and the
    resize, at their size (profile 5 for Cityscapes) the decoding, ~40 ms of a 2048x1024 PNG against ~1 ms to read
    the uncompressed copy, which costs 8 MiB of disk per image there. "always" is the same (kept for callers).
    A cache that does not fit is refused (UserError) before anything is created. `reader` reads another data set's
    files (CamVid, a folder; `training.data.layouts.SampleReader`), Cityscapes' are read as always without one.
    """
    if log is None:
        log = (lambda message: print(message, flush=True)) if _is_main_process() else (lambda message: None)
    root = Path(root).resolve()
    if mode not in ("auto", "always"):
        raise ValueError(f"cache mode {mode!r}: expected 'auto' or 'always'")
    plan, expected, stats = _plan(root, split, images, labels, profile, cache_dir, reader)
    if plan.ready:
        return CachedSplit(plan.directory, len(images))
    check_room([plan])
    directory = plan.directory
    _make_directory(directory)
    with _locked(directory, log):
        status, stale = check_cache(directory, expected, stats, profile)  # another process may have built it
        if status != "ok":
            remove_stale_temporaries(directory)  # of builders that were killed; never a live one's (other nodes)
            if status != "stale":  # again, under the lock: another builder may have failed meanwhile
                check_room([CachePlan(directory, split_bytes(len(images), profile), plan.what)])
            todo = len(stale) if status == "stale" else len(images)
            _build(
                directory,
                expected,
                images,
                labels,
                profile,
                stale if status == "stale" else None,
                workers if workers is not None else _default_workers(todo),
                log,
                reader,
            )
    return CachedSplit(directory, len(images))


def plan_cache(
    root: str | Path,
    split: str,
    images: list[str],
    labels: list[str],
    profile: Profile,
    full_labels: bool = False,
    cache_dir: str | Path | None = None,
    reader: SampleReader | None = None,
) -> list[CachePlan]:
    """What caching one split at `profile` (and, with `full_labels`, its full-resolution labels) would write, for
    `check_room` before anything is built."""
    root = Path(root).resolve()
    plans = [_plan(root, split, images, labels, profile, cache_dir, reader)[0]]
    if full_labels:
        label_plan = _label_plan(root, split, labels, cache_dir, reader)[0]
        if label_plan is not None:
            plans.append(label_plan)
    return plans


# ------------------------------------------------------------------------------ full-resolution labels (scoring)
# Validation scores predictions at the labels' own resolution (training.evaluation.scoring). Decoding a 2048x1024 label
# PNG and mapping it costs ~10 ms; the cached uint8 train ids are read in ~0.2 ms. The labels of a split are stored
# once, whatever the profile, next to the profile caches:
#
#     <dir>/labels-full/<split>/labels.npy   uint8 N x H x W train ids (void 255) at the labels' own size
#                               manifest.json
#
# Built in this process (no pool: ~10 ms a label), under the same lock and with the same manifest rules as above.
FULL_LABELS = "labels-full"


class CachedLabels:
    """Read access to one split's cached full-resolution train ids; opens its memory map lazily in each process."""

    def __init__(self, directory: Path, count: int):
        self.directory, self.count = directory, count
        self._labels = None
        self._pid = None

    def __getstate__(self):
        return {"directory": self.directory, "count": self.count, "_labels": None, "_pid": None}

    def read(self, index: int) -> torch.Tensor:
        """uint8 train ids HxW at the label's own size."""
        if self._labels is None or self._pid != os.getpid():
            self._labels, self._pid = np.load(self.directory / "labels.npy", mmap_mode="r"), os.getpid()
        return torch.from_numpy(np.array(self._labels[index]))


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    with open(path, "rb") as file:
        head = file.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise UserError(f"cannot read PNG {path}: not a PNG file")
    return struct.unpack(">II", head[16:24])


def _label_stats(labels: list[str]) -> list[list[int]]:
    stats = []
    for label in labels:
        info = os.stat(label)
        stats.append([info.st_size, info.st_mtime_ns])
    return stats


def _labels_ok(directory: Path, expected: dict, stats: list[list[int]]) -> bool:
    manifest = _read_manifest(directory)
    if (
        manifest is None
        or manifest.get("complete") is not True
        or manifest.get("stats") != stats
        or any(manifest.get(k) != v for k, v in expected.items())
    ):
        return False
    width, height = expected["size"]
    try:
        labels = np.load(directory / "labels.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return labels.dtype == np.uint8 and labels.shape == (len(stats), height, width)


def _label_plan(
    root: Path, split: str, labels: list[str], cache_dir, reader: SampleReader | None = None
) -> tuple[CachePlan | None, dict, list[list[int]]]:
    """(where the split's full-resolution labels are or would be cached and what a build would write there, or None
    where the labels differ in size; the manifest expected; the labels' stats)."""
    sizes = {png_size(label) for label in labels}
    if len(sizes) != 1:
        return None, {}, []
    ((width, height),) = sizes
    try:
        stats = _label_stats(labels)
    except OSError as error:
        raise UserError(f"cannot read {error.filename}: {error.strerror}") from None
    expected = {
        "version": CACHE_VERSION,
        "kind": "full-resolution train ids",
        "split": split,
        "size": [width, height],
        "files": [os.path.relpath(label, root) for label in labels],
        **(reader.manifest() if reader else {}),
    }
    what = f"{split} labels at {width}x{height}"
    candidates = [base / FULL_LABELS / split for base in cache_locations(root, cache_dir)]
    for directory in candidates:
        if _labels_ok(directory, expected, stats):
            return CachePlan(directory, 0, what, ready=True), expected, stats
    directory = _target(candidates)
    needed = 0 if _being_built(directory) else npy_bytes((len(labels), height, width))
    return CachePlan(directory, needed, what), expected, stats


def _write_labels(directory: Path, expected: dict, labels: list[str], log, reader: SampleReader | None = None) -> None:
    """Decode every label into a new array (temporary name until complete), then the manifest. A write error: the
    split's label cache is removed and the build ends with one line (UserError)."""
    start = time.perf_counter()
    (width, height), split = expected["size"], expected["split"]
    shape = (len(labels), height, width)
    (directory / MANIFEST).unlink(missing_ok=True)
    stats = _label_stats(labels)  # taken before reading: a file changed meanwhile is caught next time
    tmp = directory / f"labels.{_temporary_tag()}.tmp.npy"
    try:
        _create_npy(tmp, shape)
        log(
            f"cache: writing {len(labels)} {split} labels at {width}x{height} to {directory} "
            f"({human_bytes(npy_bytes(shape))}; once per split, for full-resolution scoring)"
        )
        rows = _Rows(tmp)
        try:
            for index, label in enumerate(labels):
                rows.write(index, read_label(label, reader).numpy())
        finally:
            rows.close()
        _fsync(tmp)
        os.replace(tmp, directory / "labels.npy")
        _write_json(directory / MANIFEST, {**expected, "stats": stats, "complete": True})
    except OSError as error:  # a full disk or quota, an I/O error
        _remove_split_cache(directory)
        raise _write_failure(directory, error) from None
    finally:
        tmp.unlink(missing_ok=True)
    log(f"cache: {split} labels ready in {time.perf_counter() - start:.1f} s")


def prepare_label_cache(
    root: str | Path,
    split: str,
    labels: list[str],
    cache_dir: str | Path | None = None,
    log=None,
    reader: SampleReader | None = None,
) -> CachedLabels | None:
    """The split's train ids at the labels' own resolution, cached once; None where the labels differ in size
    (then they are decoded per sample). A changed source file (size or mtime) rebuilds the whole cache. A cache that
    does not fit is refused (UserError) before anything is created."""
    if log is None:
        log = (lambda message: print(message, flush=True)) if _is_main_process() else (lambda message: None)
    root = Path(root).resolve()
    plan, expected, stats = _label_plan(root, split, labels, cache_dir, reader)
    if plan is None or plan.ready:
        return None if plan is None else CachedLabels(plan.directory, len(labels))
    check_room([plan])
    directory = plan.directory
    _make_directory(directory)
    with _locked(directory, log) as held:
        if not _labels_ok(directory, expected, stats):  # another process may have built it meanwhile
            if held:
                for leftover in directory.glob("*.tmp*"):  # from a builder that was killed
                    leftover.unlink(missing_ok=True)
            width, height = expected["size"]
            check_room([CachePlan(directory, npy_bytes((len(labels), height, width)), plan.what)])
            _write_labels(directory, expected, labels, log, reader)
    return CachedLabels(directory, len(labels))
