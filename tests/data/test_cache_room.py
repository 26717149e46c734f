"""A cache that does not fit (training/data/cache.py, issue 21 item 3).

Refused before anything is written, with one line naming the folder, the bytes needed and free, and the ways out; a
disk or quota that fills during the build (the preallocation, a pwrite, a helper killed by SIGBUS) ends it with one
line too and leaves no half-built cache; --cache-dir wins over FASTSCNN_CACHE_DIR, which wins over the default.

The full disks are small tmpfs file systems mounted for the test (root, as in CI) and unmounted after it; where
mounting is impossible those tests are skipped and say why. Builds that could end in a SIGBUS (the code before this
fix wrote through memory maps) run in a forked child, so that such a death fails the test instead of ending pytest.
"""

from __future__ import annotations

import faulthandler
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_script, stage_args

from training.data import cache as cache_module
from training.data import images as images_module
from training.data.cache import ROOM_MARGIN, npy_bytes, plan_cache, prepare_cache, prepare_label_cache, split_bytes
from training.data.dataset import CityscapesSegmentation, split_files, train_transform, val_transform
from training.errors import UserError
from training.profiles import Profile, resolve_profile

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]  # torchvision 0.29

MiB = 2**20
HIGHEST = resolve_profile("highest")  # 2048x1024: 8 MiB a cached sample (3 + 1 bytes a pixel)
BIG = Profile("big", 0, (1024, 512), (512, 256))  # 2 MiB a cached sample
DOWN = Profile("down", 0, (160, 80), (128, 64))


@pytest.fixture
def small_fs(tmp_path):
    """mount(MiB) -> a fresh tmpfs of that size (unmounted after the test)."""
    mounted = []

    def mount(size_mib: int) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here: the full-disk tests mount a small tmpfs (root, as in CI)")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(target)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): the full-disk tests need root, as in CI")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)


def fill(fs: Path, leave: int = 0) -> None:
    """Take all the free space of `fs` but `leave` bytes (another user's files, a quota reached)."""
    free = shutil.disk_usage(fs).free
    fd = os.open(fs / f"filler{time.monotonic_ns()}", os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)
    assert shutil.disk_usage(fs).free <= leave


def cache_files(folder: Path) -> list[str]:
    """What a cache left under `folder`: every file but the (empty) lock files and the test's fillers."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock" and not p.name.startswith(("filler", "sparse"))
    )


def in_child(function) -> tuple[str, str]:
    """Run `function()` in a forked child: ("returned", ""), ("raised", "<type>: <message>") or ("died", exit code).
    The code before this fix wrote through memory maps: a full disk killed the writer with SIGBUS."""
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def target():
        try:
            function()
            results.put(("returned", ""))
        except BaseException as error:
            results.put(("raised", f"{type(error).__name__}: {error}"))

    child = context.Process(target=target)
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        child.join()
    return results.get() if not results.empty() else ("died", str(child.exitcode))


def without_decoding(make):
    """`make()` where decoding an image raises: a refusal that comes through it came before any image was read
    (the issue's "refused in under 5 s", without a clock: the check costs a stat per file, the build a decode)."""

    def decoded(*_args, **_kwargs):
        raise AssertionError("an image was decoded before the room check")

    for module in (images_module, cache_module):
        module.read_png = module.read_train_ids = decoded
    return make()


def copy_data(tiny_cityscapes, folder: Path) -> Path:
    return Path(shutil.copytree(tiny_cityscapes, folder / "data"))


# --------------------------------------------------------------------------------------------- bytes, exactly
def test_the_bytes_of_a_cache_are_computed_exactly(tiny_cityscapes, tmp_path):
    cached = CityscapesSegmentation(
        tiny_cityscapes, "val", val_transform(DOWN), profile=DOWN, full_labels=True, cache_dir=tmp_path
    )
    directory = cached.cache.directory
    on_disk = (directory / "images.npy").stat().st_size + (directory / "labels.npy").stat().st_size
    header = 128  # numpy's .npy header of these shapes: 10 bytes of magic and length, the dict padded to 128
    assert split_bytes(2, DOWN) == on_disk == 2 * (3 + 1) * 160 * 80 + 2 * header
    labels = cached.label_cache.directory / "labels.npy"
    assert npy_bytes((2, 128, 256)) == labels.stat().st_size == 2 * 256 * 128 + header


def test_a_cache_another_live_process_is_writing_needs_no_room_here(tiny_cityscapes, tmp_path):
    """Its files are preallocated: counting them again would refuse a second rank (or job) that will only wait."""
    images, labels = split_files(tiny_cityscapes, "train")
    (plan,) = plan_cache(tiny_cityscapes, "train", images, labels, DOWN, cache_dir=tmp_path)
    assert plan.needed == split_bytes(4, DOWN) and not plan.ready
    plan.directory.mkdir(parents=True)
    live = plan.directory / f"images.{socket.gethostname()}.{os.getpid()}.tmp.npy"
    live.write_bytes(b"")
    assert plan_cache(tiny_cityscapes, "train", images, labels, DOWN, cache_dir=tmp_path)[0].needed == 0
    live.rename(plan.directory / f"images.{socket.gethostname()}.{dead_pid()}.tmp.npy")  # a killed builder's
    assert plan_cache(tiny_cityscapes, "train", images, labels, DOWN, cache_dir=tmp_path)[0].needed > 0


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------- refused before building
REFUSAL = re.compile(
    r"cache (?P<folder>\S+): needs (?P<needed>[\d.]+ MiB) \((?P<parts>.*), 8\.0 MiB spare\), "
    r"(?P<free>[\d.]+ MiB) free there; expected room for it: put the cache elsewhere with --cache-dir DIR "
    r"\(or the environment variable FASTSCNN_CACHE_DIR=DIR\), or run without it with --no-cache"
)


def test_a_cache_that_does_not_fit_is_refused_before_anything_is_written(tiny_cityscapes, small_fs):
    fs = small_fs(24)
    root = copy_data(tiny_cityscapes, fs)  # a read-write data set on a small file system: the cache goes beside it
    free = shutil.disk_usage(fs).free
    outcome = in_child(
        lambda: without_decoding(
            lambda: CityscapesSegmentation(root, "train", train_transform(HIGHEST), profile=HIGHEST)
        )
    )
    assert outcome[0] == "raised" and outcome[1].startswith("UserError: "), outcome
    match = REFUSAL.fullmatch(outcome[1].removeprefix("UserError: "))
    assert match, outcome[1]
    arrays = 4 * (3 + 1) * 2048 * 1024  # 4 train images at 2048x1024: images and labels, uint8
    assert match["folder"] == str(root.resolve() / ".cache")
    assert match["needed"] == f"{(arrays + 2 * 128 + ROOM_MARGIN) / MiB:.1f} MiB" == "40.0 MiB"
    assert match["parts"] == "train at highest-2048x1024 32.0 MiB"
    assert match["free"] == f"{free / MiB:.1f} MiB"
    assert not (root / ".cache").exists() and shutil.disk_usage(fs).free == free  # nothing written


@pytest.fixture(scope="module")
def labels_1024(tmp_path_factory) -> Path:
    """A demo data set whose 2 val labels are 1024x512 (1 MiB each at their own size)."""
    from demo.dataset import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("labels_1024"), num_train=1, num_val=2, size=(1024, 512), seed=0)


def test_a_dataset_counts_its_images_and_full_resolution_labels_together(labels_1024, small_fs):
    """The images at the profile fit alone; with the labels at their own size they do not: neither is built."""
    images_size, labels_size = split_bytes(2, BIG), 2 * 1024 * 512 + 128
    fs = small_fs(24)
    fill(fs, leave=images_size + ROOM_MARGIN + labels_size // 2)
    outcome = in_child(
        lambda: CityscapesSegmentation(
            labels_1024, "val", val_transform(BIG), profile=BIG, full_labels=True, cache_dir=fs / "cache"
        )
    )
    assert outcome[0] == "raised" and "val at big-1024x512 4.0 MiB, val labels at 1024x512 1.0 MiB" in outcome[1]
    assert not (fs / "cache").exists()


def train_highest(data: Path, work: Path, *extra: str, env: dict | None = None):
    work.mkdir(exist_ok=True)
    argv = stage_args(data, 1, "--profile", "highest", "--device", "cpu", *extra, experiment="cache-room")
    return run_script("train.py", *argv, cwd=work, env=env)


def test_the_training_script_refuses_train_and_val_that_do_not_fit_together(tiny_cityscapes, small_fs, tmp_path):
    """The training split alone fits; with the validation split (and its full-resolution labels) it does not: the
    stage refuses before either is built, exit 2 and one line."""
    fs = small_fs(44)
    root = copy_data(tiny_cityscapes, fs)
    assert split_bytes(4, HIGHEST) + ROOM_MARGIN < shutil.disk_usage(fs).free  # the train split would fit alone
    result = train_highest(root, tmp_path / "work", env={"FASTSCNN_CACHE_DIR": ""})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    match = REFUSAL.fullmatch(lines[0].removeprefix("error: "))
    assert match and match["folder"] == str(root.resolve() / ".cache"), lines[0]
    assert match["parts"] == (
        "train at highest-2048x1024 32.0 MiB, val at highest-2048x1024 16.0 MiB, val labels at 256x128 64.1 KiB"
    )
    assert not (root / ".cache").exists()
    assert not (tmp_path / "work" / "checkpoints").exists() and not (tmp_path / "work" / "models").exists()


def test_cache_dir_flag_wins_over_the_variable(tiny_cityscapes, small_fs, tmp_path):
    """Both point somewhere: the flag's folder is the one used (here: refused, it is too small); the variable's is
    used without the flag."""
    fs = small_fs(24)
    data = copy_data(tiny_cityscapes, tmp_path)
    roomy = tmp_path / "roomy"
    result = train_highest(
        data, tmp_path / "work", "--cache-dir", str(fs / "flag"), env={"FASTSCNN_CACHE_DIR": str(roomy)}
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    match = REFUSAL.fullmatch(result.stderr.strip().removeprefix("error: "))
    assert match and Path(match["folder"]).parent == fs / "flag", result.stderr
    result = train_highest(data, tmp_path / "work", env={"FASTSCNN_CACHE_DIR": str(fs / "variable")})
    match = REFUSAL.fullmatch(result.stderr.strip().removeprefix("error: "))
    assert result.returncode == 2 and match and Path(match["folder"]).parent == fs / "variable", result.stderr
    assert not roomy.exists() and cache_files(fs) == []


def test_cache_locations_flag_then_variable_then_beside_the_data(tiny_cityscapes, tmp_path, monkeypatch):
    root = Path(tiny_cityscapes).resolve()
    monkeypatch.delenv("FASTSCNN_CACHE_DIR", raising=False)
    default = cache_module.cache_locations(root)
    assert default[0] == root / ".cache" and default[1].parent == (Path.cwd() / "data" / "cache").resolve()
    monkeypatch.setenv("FASTSCNN_CACHE_DIR", str(tmp_path / "variable"))
    (by_variable,) = cache_module.cache_locations(root)
    (by_flag,) = cache_module.cache_locations(root, tmp_path / "flag")
    assert by_variable.parent == tmp_path / "variable" and by_flag.parent == tmp_path / "flag"
    assert by_variable.name == by_flag.name == default[1].name  # one folder per data set: <name>-<hash of its path>
    other = cache_module.cache_locations(tmp_path / "other" / root.name)[0]
    assert other.name != by_variable.name  # two data sets of one name never share a cache folder

    dataset = CityscapesSegmentation(root, "val", val_transform(DOWN), profile=DOWN)  # built where the variable says
    assert dataset.cache.directory.is_relative_to(tmp_path / "variable")


# -------------------------------------------------------------------------------------- a write error part-way
FAILED = re.compile(
    r"UserError: cache (?P<folder>\S+): writing it failed: (?P<cause>.+); the half-built cache was removed\. "
    r"Expected room for it: put the cache elsewhere with --cache-dir DIR \(or the environment variable "
    r"FASTSCNN_CACHE_DIR=DIR\), or run without it with --no-cache"
)


def build_train(tiny_cityscapes, cache_dir: Path, workers: int, log=None):
    images, labels = split_files(tiny_cityscapes, "train")
    return lambda: prepare_cache(
        tiny_cityscapes, "train", images, labels, BIG, cache_dir=cache_dir, workers=workers, log=log or print
    )


def test_a_disk_that_fills_after_the_check_fails_at_the_preallocation(tiny_cityscapes, small_fs, monkeypatch):
    """Another job takes the space between the check and the build: the arrays' preallocation fails at once."""
    fs = small_fs(24)
    real = cache_module._create_npy

    def someone_fills_the_disk(path, shape):
        fill(fs, leave=MiB)
        return real(path, shape)

    monkeypatch.setattr(cache_module, "_create_npy", someone_fills_the_disk)
    outcome = in_child(build_train(tiny_cityscapes, fs / "cache", workers=2))
    match = FAILED.fullmatch(outcome[1])
    assert outcome[0] == "raised" and match, outcome
    assert match["cause"] == "No space left on device (ENOSPC)" and "train" in match["folder"]
    assert cache_files(fs) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_disk_that_fills_during_the_writes_is_one_line(tiny_cityscapes, small_fs, monkeypatch, workers):
    """Without preallocation (a file system that lacks it), a full disk reaches the writes themselves: in this
    process (one worker) or in the helper processes."""
    fs = small_fs(24)
    monkeypatch.setattr(cache_module, "_preallocate", lambda fd, size: None, raising=False)

    def log(line):
        if line.startswith("cache: writing"):  # the arrays exist, not one sample is written yet
            fill(fs)

    outcome = in_child(build_train(tiny_cityscapes, fs / "cache", workers, log))
    match = FAILED.fullmatch(outcome[1])
    assert outcome[0] == "raised" and match, outcome
    assert match["cause"] == "No space left on device (ENOSPC)"
    assert cache_files(fs) == []


SPARSE = {}


def write_through_a_memory_map(task):
    """What the cache's helpers did before: write a sample through a memory map of a sparse file, here on a full
    file system, where the kernel can only answer with SIGBUS."""
    faulthandler.disable()  # the death is expected: no traceback of this helper in the test's output
    path = SPARSE["fs"] / f"sparse.{os.getpid()}"
    with open(path, "wb+") as file:
        file.truncate(16 * MiB)
        memory = mmap.mmap(file.fileno(), 16 * MiB)
        memory[:] = b"\x01" * (16 * MiB)
    return task[0]


def test_a_helper_killed_by_sigbus_is_one_line_and_the_cache_is_removed(tiny_cityscapes, small_fs, monkeypatch):
    fs = small_fs(24)
    SPARSE["fs"] = fs
    monkeypatch.setattr(cache_module, "_cache_one", write_through_a_memory_map)

    def log(line):
        if line.startswith("cache: writing"):
            fill(fs)

    outcome = in_child(build_train(tiny_cityscapes, fs / "cache", workers=2, log=log))
    match = FAILED.fullmatch(outcome[1])
    assert outcome[0] == "raised" and match, outcome
    assert match["cause"].startswith("a helper process writing it died")
    assert cache_files(fs) == []


def test_full_resolution_labels_that_fill_the_disk_are_one_line(tiny_cityscapes, small_fs, monkeypatch):
    """The full-resolution labels are written in this process: a full disk must not be a SIGBUS here."""
    fs = small_fs(24)
    monkeypatch.setattr(cache_module, "_preallocate", lambda fd, size: None, raising=False)
    _, labels = split_files(tiny_cityscapes, "val")

    def log(line):
        if line.startswith("cache: writing"):
            fill(fs)

    outcome = in_child(lambda: prepare_label_cache(tiny_cityscapes, "val", labels, cache_dir=fs / "cache", log=log))
    match = FAILED.fullmatch(outcome[1])
    assert outcome[0] == "raised" and match, outcome
    assert match["cause"] == "No space left on device (ENOSPC)" and "labels-full" in match["folder"]
    assert cache_files(fs) == []


def test_an_error_reading_a_source_file_is_named_as_such(tiny_cityscapes, tmp_path, monkeypatch):
    """Only errors on the cache's own files are write failures; a source that vanishes part-way is a read error."""
    images, labels = split_files(tiny_cityscapes, "train")

    def vanished(task):
        raise FileNotFoundError(2, "No such file or directory", task[2])

    monkeypatch.setattr(cache_module, "_cache_one", vanished)
    with pytest.raises(UserError, match=rf"^cannot read {re.escape(labels[0])}: No such file or directory$"):
        prepare_cache(tiny_cityscapes, "train", images, labels, DOWN, cache_dir=tmp_path, workers=1, log=print)
    assert cache_files(tmp_path) == []


REAL_CACHE_ONE = cache_module._cache_one


def the_first_helper_dies(task):
    """Helper processes: the one with sample 0 dies of a SIGBUS, the other is still at work (and ignores the SIGTERM
    with which the pool tries to end it, as the cache's helpers do)."""
    faulthandler.disable()
    if task[0] == 0:
        os.kill(os.getpid(), signal.SIGBUS)
    time.sleep(0.5)
    return REAL_CACHE_ONE(task)


def test_a_helper_that_dies_while_another_works_ends_the_build_without_waiting_for_ever(
    tiny_cityscapes, tmp_path, monkeypatch
):
    monkeypatch.setattr(cache_module, "_cache_one", the_first_helper_dies)
    start = time.perf_counter()
    outcome = in_child(build_train(tiny_cityscapes, tmp_path / "cache", workers=2))
    match = FAILED.fullmatch(outcome[1])
    assert outcome[0] == "raised" and match and match["cause"].startswith("a helper process writing it died"), outcome
    assert time.perf_counter() - start < 60 and cache_files(tmp_path) == []
