"""Per-profile cache of the data set: images and train ids stored once, already resized to a profile's image size.

Decoding a 2048x1024 PNG costs ~40 ms and its resize another ms or two; a cached 576x288 sample is read in ~0.1 ms.
For each profile and split the cache holds two uncompressed arrays, read through memory maps by the loader workers:

    <dir>/<profile>-<W>x<H>/<split>/images.npy   uint8 N x 3 x H x W (the profile's image size)
                                    labels.npy   uint8 N x H x W train ids (void 255), resized by nearest neighbour
                                    manifest.json

`<dir>` is `<data dir>/.cache` where the data dir is writable (or already holds a valid cache), else
`data/cache/<data dir name>-<hash of its path>` under the working directory. The manifest records the cache version,
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

A cached sample is exactly the output of `training.data.images.resize(profile)` on the uncached one, and that resize is
the first op of the training and validation transforms (a no-op on an image already at the size): cached and
uncached samples are identical, augmentations included.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import tv_tensors
from torchvision.io import ImageReadMode

from training.errors import UserError
from training.data.workers import map_in_helpers
from training.data.images import read_png, read_train_ids, resize
from training.data.layouts import SampleReader
from training.profiles import Profile

CACHE_VERSION = 1
MANIFEST = "manifest.json"
FALLBACK_DIR = Path("data/cache")  # relative to the working directory (the repository root for the scripts)
STALE_AFTER_S = 3600  # a temporary file untouched this long belongs to a builder that is gone
HEARTBEAT_S = 60  # how often a builder touches its temporary files
_TEMPORARY = re.compile(r"^(?:images|labels|manifest\.json)\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp(?:\.npy)?$")


def profile_key(profile: Profile) -> str:
    return f"{profile.name}-{profile.image_size[0]}x{profile.image_size[1]}"


def cache_locations(root: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Where a data set's cache may live, in order of preference."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return [root / ".cache", (FALLBACK_DIR / f"{root.name}-{digest}").resolve()]


def _source_stats(images: list[str], labels: list[str]) -> list[list[int]]:
    stats = []
    for image, label in zip(images, labels):
        a, b = os.stat(image), os.stat(label)
        stats.append([a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns])
    return stats


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


def _init_worker(
    images_path: str, labels_path: str, profile: Profile, reader: SampleReader | None = None, threads: int = 1
) -> None:
    torch.set_num_threads(threads)
    _worker_state.update(
        images=np.load(images_path, mmap_mode="r+"),
        labels=np.load(labels_path, mmap_mode="r+"),
        resize=resize(profile),
        reader=reader,
    )


def read_sample(image_path: str, label_path: str, reader: SampleReader | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image 3xHxW and train ids HxW from the files: Cityscapes' PNGs and label ids (no reader), or through
    the layout's reader (CamVid, a folder)."""
    if reader is None:
        return read_png(image_path, ImageReadMode.RGB), read_train_ids(label_path)
    return reader.image(image_path), reader.mask(label_path)


def read_label(label_path: str, reader: SampleReader | None) -> torch.Tensor:
    return read_train_ids(label_path) if reader is None else reader.mask(label_path)


def _cache_one(task: tuple[int, str, str]) -> int:
    index, image_path, label_path = task
    image, mask = read_sample(image_path, label_path, _worker_state["reader"])
    image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
    image, mask = _worker_state["resize"](image, mask)
    _worker_state["images"][index] = image.numpy()
    _worker_state["labels"][index] = mask.numpy()
    return index


def _cache_chunk(tasks: list[tuple[int, str, str]]) -> int:
    for task in tasks:
        _cache_one(task)
    return len(tasks)


def _fill(
    images_path: Path, labels_path: Path, tasks: list, profile: Profile, workers: int, desc: str, reader: SampleReader
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
        _worker_state.clear()
        bar.close()
    for path in (images_path, labels_path):  # the data on disk before the manifest that vouches for it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    """Write the whole cache (stale is None) or re-read the changed entries; the manifest comes last."""
    count = len(images)
    stats = _source_stats(images, labels)  # taken before reading: a file changed meanwhile is caught next time
    what = f"{expected['split']} at {profile_key(profile)}"
    start = time.perf_counter()
    if stale is None:
        (directory / MANIFEST).unlink(missing_ok=True)
        height, width = profile.image_hw
        tmp = {name: directory / f"{name}.{_temporary_tag()}.tmp.npy" for name in ("images", "labels")}
        np.lib.format.open_memmap(tmp["images"], "w+", np.uint8, (count, 3, height, width))
        np.lib.format.open_memmap(tmp["labels"], "w+", np.uint8, (count, height, width))
        log(
            f"cache: writing {count} {what} to {directory} ({workers} processes, "
            f"{count * 4 * height * width / 2**30:.2f} GiB; once per profile)"
        )
        try:
            tasks = [(i, image, label) for i, (image, label) in enumerate(zip(images, labels))]
            _fill(tmp["images"], tmp["labels"], tasks, profile, workers, f"caching {what}", reader)
            for name, path in tmp.items():  # readers of an older cache keep their (unlinked) files
                os.replace(path, directory / f"{name}.npy")
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)
    else:
        _write_json(directory / MANIFEST, {**expected, "stats": _read_manifest(directory)["stats"], "complete": False})
        log(f"cache: {len(stale)} of {count} source files of {what} changed; re-reading them into {directory}")
        tasks = [(i, images[i], labels[i]) for i in stale]
        _fill(directory / "images.npy", directory / "labels.npy", tasks, profile, workers, f"updating {what}", reader)
    _write_json(directory / MANIFEST, {**expected, "stats": stats, "complete": True})
    log(f"cache: {what} ready in {time.perf_counter() - start:.1f} s")


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def _default_workers(count: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, count, 32))


def _is_main_process() -> bool:
    from training.engine.distributed import detect

    return detect().is_main


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
    `reader` reads the files (Cityscapes' by default; another data set's records its class set in the manifest).
    """
    if log is None:
        log = (lambda message: print(message, flush=True)) if _is_main_process() else (lambda message: None)
    root = Path(root).resolve()
    if mode not in ("auto", "always"):
        raise ValueError(f"cache mode {mode!r}: expected 'auto' or 'always'")
    expected = {**_expected(root, split, images, labels, profile), **(reader.manifest() if reader else {})}
    try:
        stats = _source_stats(images, labels)
    except OSError as error:
        raise UserError(f"cannot read {error.filename}: {error.strerror}") from None
    subdir = Path(profile_key(profile)) / split
    candidates = [base / subdir for base in cache_locations(root, cache_dir)]
    for directory in candidates:  # a valid cache anywhere (even read-only) is used as it is
        if check_cache(directory, expected, stats, profile)[0] == "ok":
            return CachedSplit(directory, len(images))
    directory = next((d for d in candidates if _writable(d)), None)
    if directory is None:
        raise UserError(
            f"cache: cannot create any of {', '.join(map(str, candidates))} "
            f"(expected a writable directory; or train with --no-cache)"
        )
    with _locked(directory, log):
        status, stale = check_cache(directory, expected, stats, profile)  # another process may have built it
        if status != "ok":
            remove_stale_temporaries(directory)  # of builders that were killed; never a live one's (other nodes)
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


# ------------------------------------------------------------------------------ full-resolution labels (scoring)
# Validation scores predictions at the labels' own resolution (training.evaluation.scoring). Decoding a 2048x1024 label PNG
# and mapping it costs ~10 ms; the cached uint8 train ids are read in ~0.2 ms. The labels of a split are stored once,
# whatever the profile, next to the profile caches:
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


def prepare_label_cache(
    root: str | Path,
    split: str,
    labels: list[str],
    cache_dir: str | Path | None = None,
    log=None,
    reader: SampleReader | None = None,
) -> CachedLabels | None:
    """The split's train ids at the labels' own resolution, cached once; None where the labels differ in size
    (then they are decoded per sample). A changed source file (size or mtime) rebuilds the whole cache."""
    if log is None:
        log = (lambda message: print(message, flush=True)) if _is_main_process() else (lambda message: None)
    root = Path(root).resolve()
    sizes = {png_size(label) for label in labels}
    if len(sizes) != 1:
        return None
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
    candidates = [base / FULL_LABELS / split for base in cache_locations(root, cache_dir)]
    for directory in candidates:
        if _labels_ok(directory, expected, stats):
            return CachedLabels(directory, len(labels))
    directory = next((d for d in candidates if _writable(d)), None)
    if directory is None:
        raise UserError(
            f"cache: cannot create any of {', '.join(map(str, candidates))} "
            f"(expected a writable directory; or train with --no-cache)"
        )
    with _locked(directory, log) as held:
        if not _labels_ok(directory, expected, stats):  # another process may have built it meanwhile
            if held:
                for leftover in directory.glob("*.tmp*"):  # from a builder that was killed
                    leftover.unlink(missing_ok=True)
            start = time.perf_counter()
            (directory / MANIFEST).unlink(missing_ok=True)
            log(
                f"cache: writing {len(labels)} {split} labels at {width}x{height} to {directory} "
                f"({len(labels) * width * height / 2**30:.2f} GiB; once per split, for full-resolution scoring)"
            )
            stats = _label_stats(labels)  # taken before reading: a file changed meanwhile is caught next time
            tmp = directory / f"labels.{os.getpid()}.tmp.npy"
            try:
                array = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(labels), height, width))
                for index, label in enumerate(labels):
                    array[index] = read_label(label, reader).numpy()
                array.flush()
                del array
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, directory / "labels.npy")
            finally:
                tmp.unlink(missing_ok=True)
            _write_json(directory / MANIFEST, {**expected, "stats": stats, "complete": True})
            log(f"cache: {split} labels ready in {time.perf_counter() - start:.1f} s")
    return CachedLabels(directory, len(labels))
