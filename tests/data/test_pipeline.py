"""The per-profile cache (training/data/cache.py) and the input pipeline benchmark."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_script
from PIL import Image

from training.data import cache as cache_module
from training.data.cache import MANIFEST, prepare_cache, profile_key
from training.data.dataset import CityscapesSegmentation, train_transform, val_transform
from training.errors import UserError, run_cli
from training.profiles import Profile, resolve_profile

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]  # torchvision 0.29


# Smaller than the tiny set's 256x128 images: "auto" caches it, and the resize really does something.
DOWN = Profile("down", 0, (160, 80), (128, 64))


def copy_tiny(tiny_cityscapes, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_cityscapes, root)
    return root


def datasets(root, split, profile, **cache_args):
    transform = (train_transform if split == "train" else val_transform)(profile)
    cached = CityscapesSegmentation(root, split, transform, profile=profile, **cache_args)
    plain = CityscapesSegmentation(root, split, transform, profile=profile, cache=False)
    return cached, plain


def same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def build_log(root, split, profile, cache_dir=None, mode="auto", workers=1) -> list[str]:
    """Prepare the cache of `split` and return what it logged."""
    lines = []
    ds = CityscapesSegmentation(root, split, val_transform(profile))
    prepare_cache(
        root, split, ds.images, ds.labels, profile, mode=mode, cache_dir=cache_dir, workers=workers, log=lines.append
    )
    return lines


# ------------------------------------------------------------------------------------------- cached == uncached
@pytest.mark.parametrize("profile", [DOWN, resolve_profile("low")], ids=["downscale", "low-always"])
def test_cached_and_uncached_samples_are_identical(tiny_cityscapes, tmp_path, profile):
    mode = "always" if profile.name == "low" else True
    cache_dir = tmp_path / "cache"
    val_cached, val_plain = datasets(tiny_cityscapes, "val", profile, cache=mode, cache_dir=cache_dir)
    assert val_cached.cache is not None and val_plain.cache is None
    for i in range(len(val_plain)):
        assert same(val_cached[i], val_plain[i]), i
    train_cached, train_plain = datasets(tiny_cityscapes, "train", profile, cache=mode, cache_dir=cache_dir)
    for i in range(len(train_plain)):
        for seed in (0, 1, 12345, 2**61 + 3):
            assert same(train_cached[(i, seed)], train_plain[(i, seed)]), (i, seed)
    raw_cached, raw_plain = train_cached.load(0), train_plain.load(0)
    assert raw_cached[0].shape == (3, *profile.image_hw) and raw_plain[0].shape == (3, 128, 256)


def test_cache_lives_next_to_the_data_or_in_data_cache(tiny_cityscapes, tmp_path, monkeypatch):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    monkeypatch.chdir(tmp_path)
    dataset = CityscapesSegmentation(root, "val", val_transform(DOWN), profile=DOWN)
    assert dataset.cache.directory == root.resolve() / ".cache" / profile_key(DOWN) / "val"
    manifest = json.loads((dataset.cache.directory / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["image_size"] == [160, 80] and len(manifest["stats"]) == 2

    # A data dir that cannot be written: the cache goes to data/cache/<name>-<hash>/ under the working directory.
    other = copy_tiny(tiny_cityscapes, tmp_path / "other")
    real_writable = cache_module._writable
    monkeypatch.setattr(
        cache_module, "_writable", lambda d: False if other.resolve() in d.parents else real_writable(d)
    )
    dataset = CityscapesSegmentation(other, "val", val_transform(DOWN), profile=DOWN)
    fallback = dataset.cache.directory
    assert fallback.is_relative_to((tmp_path / "data" / "cache").resolve()) and fallback.parent.name == "down-160x80"


def test_auto_mode_caches_at_the_source_size_too(tiny_cityscapes, tmp_path):
    """At the sources' own size (profile 5 for Cityscapes) the cache still saves the PNG decoding."""
    same_size = Profile("same", 0, (256, 128), (192, 96))
    dataset = CityscapesSegmentation(
        tiny_cityscapes, "val", val_transform(same_size), profile=same_size, cache_dir=tmp_path / "cache"
    )
    assert dataset.cache is not None
    plain = CityscapesSegmentation(tiny_cityscapes, "val", val_transform(same_size), profile=same_size, cache=False)
    assert all(same(dataset[i], plain[i]) for i in range(len(plain)))


def test_no_cache_flag_never_builds(tiny_cityscapes, tmp_path):
    dataset = CityscapesSegmentation(
        tiny_cityscapes, "val", val_transform(DOWN), profile=DOWN, cache=False, cache_dir=tmp_path / "cache"
    )
    assert dataset.cache is None and not (tmp_path / "cache").exists()


def test_second_use_reuses_the_cache_without_reading_pngs(tiny_cityscapes, tmp_path, monkeypatch):
    assert any("writing" in line for line in build_log(tiny_cityscapes, "train", DOWN, tmp_path))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a PNG was decoded")

    monkeypatch.setattr(cache_module, "read_png", no_decoding)
    monkeypatch.setattr("training.data.dataset.read_png", no_decoding)
    assert build_log(tiny_cityscapes, "train", DOWN, tmp_path) == []
    dataset = CityscapesSegmentation(tiny_cityscapes, "train", train_transform(DOWN), profile=DOWN, cache_dir=tmp_path)
    for i in range(len(dataset)):
        dataset[(i, i)]


def test_build_in_a_process_pool(tiny_cityscapes, tmp_path):
    lines = build_log(tiny_cityscapes, "train", DOWN, tmp_path / "pool", workers=2)
    assert "2 processes" in lines[0] and "ready" in lines[-1]
    serial = tmp_path / "serial"
    build_log(tiny_cityscapes, "train", DOWN, serial, workers=1)
    for name in ("images.npy", "labels.npy"):
        a = np.load(cache_of(tiny_cityscapes, tmp_path / "pool") / name)
        b = np.load(cache_of(tiny_cityscapes, serial) / name)
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------- stale and partial
def cache_of(root, cache_dir, split="train") -> Path:
    """Where a split's cache at DOWN goes with --cache-dir `cache_dir` (one folder per data set in it)."""
    return cache_module.cache_locations(root, cache_dir)[0] / profile_key(DOWN) / split


def test_stale_cache_is_rebuilt_when_a_source_changes(tiny_cityscapes, tmp_path):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    cache_dir = tmp_path / "cache"
    build_log(root, "train", DOWN, cache_dir)
    dataset = CityscapesSegmentation(root, "train", val_transform(DOWN))
    label = Path(dataset.labels[2])
    image = Path(dataset.images[1])

    # New content, new size: a label map of a single class.
    ids = np.array(Image.open(label))
    Image.fromarray(np.full_like(ids, 26)).save(label)
    lines = build_log(root, "train", DOWN, cache_dir)
    assert any("1 of 4 source files" in line and "changed" in line for line in lines), lines
    # Same size, new mtime: the image darkened, written back to the same number of bytes is not guaranteed, so touch.
    stamp = image.stat()
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 5_000_000_000))
    lines = build_log(root, "train", DOWN, cache_dir)
    assert any("1 of 4 source files" in line for line in lines), lines
    assert build_log(root, "train", DOWN, cache_dir) == []

    cached, plain = datasets(root, "train", DOWN, cache_dir=cache_dir)
    for i in range(len(plain)):
        assert same(cached[(i, 5)], plain[(i, 5)]), i
    assert set(cached.load(2)[1].unique().tolist()) == {13}  # car


def test_cache_of_another_torch_version_or_profile_size_is_rebuilt(tiny_cityscapes, tmp_path):
    build_log(tiny_cityscapes, "val", DOWN, tmp_path)
    path = cache_of(tiny_cityscapes, tmp_path, "val") / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "torchvision": "0.0.1"}))
    assert any("writing" in line for line in build_log(tiny_cityscapes, "val", DOWN, tmp_path))


@pytest.mark.parametrize(
    "damage", ["no manifest", "incomplete", "garbage manifest", "truncated array", "missing array", "killed"]
)
def test_partial_cache_is_detected_and_rebuilt(tiny_cityscapes, tmp_path, damage):
    build_log(tiny_cityscapes, "val", DOWN, tmp_path)
    directory = cache_of(tiny_cityscapes, tmp_path, "val")
    manifest = directory / MANIFEST
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "incomplete":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    elif damage == "garbage manifest":
        manifest.write_text('{"version": 1, "files": [')
    elif damage == "truncated array":
        data = (directory / "images.npy").read_bytes()
        (directory / "images.npy").write_bytes(data[: len(data) // 2])
    elif damage == "missing array":
        (directory / "labels.npy").unlink()
    else:  # SIGKILL during a rebuild: no manifest, half-written arrays under temporary names
        manifest.unlink()
        (directory / f"images.{socket.gethostname()}.{dead_pid()}.tmp.npy").write_bytes(b"\x93NUMPY partial")
    lines = build_log(tiny_cityscapes, "val", DOWN, tmp_path)
    assert not list(directory.glob("*.tmp*"))
    assert any("writing 2 val" in line for line in lines), lines
    cached, plain = datasets(tiny_cityscapes, "val", DOWN, cache_dir=tmp_path)
    assert all(same(cached[i], plain[i]) for i in range(len(plain)))


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_stale_temporaries_of_other_builders_are_removed(tiny_cityscapes, tmp_path):
    """Builders on several nodes may share a cache where locks do not reach across nodes (Lustre localflock): a
    builder removes the leftovers of killed builders only, never the files another live builder is writing."""
    directory = cache_of(tiny_cityscapes, tmp_path)
    directory.mkdir(parents=True)
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "another node's live builder": "images.node-b.example.org.4242.tmp.npy",
            "a live builder here": f"labels.{host}.{sleeper.pid}.tmp.npy",
            "a killed builder here": f"images.{host}.{dead_pid()}.tmp.npy",
            "an old one of another node": "labels.node-c.77.tmp.npy",
            "an old manifest of an earlier version": "manifest.json.31337.tmp",
        }
        for name in names.values():
            (directory / name).write_bytes(b"partial")
        old = time.time() - 2 * cache_module.STALE_AFTER_S
        for what in ("an old one of another node", "an old manifest of an earlier version"):
            os.utime(directory / names[what], (old, old))
        lines = build_log(tiny_cityscapes, "train", DOWN, tmp_path, workers=2)
        assert any("writing 4 train" in line for line in lines)
        left = sorted(p.name for p in directory.glob("*.tmp*"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert left == sorted([names["another node's live builder"], names["a live builder here"]])
    cached, plain = datasets(tiny_cityscapes, "train", DOWN, cache_dir=tmp_path)
    assert all(same(cached[(i, 1)], plain[(i, 1)]) for i in range(len(plain)))


def test_a_builder_names_its_temporaries_by_host_and_pid(tiny_cityscapes, tmp_path, monkeypatch):
    seen = []
    real = cache_module._fill

    def spy(images_path, labels_path, *args):
        seen.extend(p.name for p in Path(images_path).parent.glob("*.tmp*"))
        return real(images_path, labels_path, *args)

    monkeypatch.setattr(cache_module, "_fill", spy)
    build_log(tiny_cityscapes, "train", DOWN, tmp_path)
    tag = f"{socket.gethostname()}.{os.getpid()}"
    assert sorted(seen) == [f"images.{tag}.tmp.npy", f"labels.{tag}.tmp.npy"]


def test_killed_build_is_detected_and_rebuilt(tiny_cityscapes, tmp_path, monkeypatch):
    real = cache_module._cache_one
    done = []

    def killed_after_two(task):
        if len(done) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between two images leaves behind
        done.append(task[0])
        return real(task)

    monkeypatch.setattr(cache_module, "_cache_one", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_log(tiny_cityscapes, "train", DOWN, tmp_path)
    directory = cache_of(tiny_cityscapes, tmp_path)
    assert not (directory / MANIFEST).exists() and not (directory / "images.npy").exists()
    assert not list(directory.glob("*.tmp*"))
    monkeypatch.setattr(cache_module, "_cache_one", real)
    assert any("writing 4 train" in line for line in build_log(tiny_cityscapes, "train", DOWN, tmp_path))


def test_killed_update_of_a_stale_cache_is_redone(tiny_cityscapes, tmp_path, monkeypatch):
    root = copy_tiny(tiny_cityscapes, tmp_path)
    build_log(root, "train", DOWN, tmp_path / "cache")
    dataset = CityscapesSegmentation(root, "train", val_transform(DOWN))
    for path in dataset.labels[:2]:
        ids = np.array(Image.open(path))
        Image.fromarray(np.full_like(ids, 26)).save(path)

    def interrupted(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_cache_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_log(root, "train", DOWN, tmp_path / "cache")
    assert json.loads((cache_of(root, tmp_path / "cache") / MANIFEST).read_text())["complete"] is False
    monkeypatch.undo()
    lines = build_log(root, "train", DOWN, tmp_path / "cache")
    assert any("2 of 4 source files" in line for line in lines), lines
    cached, plain = datasets(root, "train", DOWN, cache_dir=tmp_path / "cache")
    assert all(same(cached[(i, 3)], plain[(i, 3)]) for i in range(len(plain)))


def _build_in_child(root, cache_dir, barrier, messages):
    barrier.wait()
    dataset = CityscapesSegmentation(root, "train", val_transform(DOWN))
    result = prepare_cache(
        root, "train", dataset.images, dataset.labels, DOWN, cache_dir=cache_dir, workers=1, log=messages.put
    )
    messages.put(f"cached {result is not None}")


def test_concurrent_processes_build_once(tiny_cityscapes, tmp_path):
    """Two processes starting together (two ranks, or two jobs): one builds, the other waits and reuses it."""
    context = multiprocessing.get_context("fork")
    barrier, messages = context.Barrier(2), context.Queue()
    procs = [
        context.Process(target=_build_in_child, args=(tiny_cityscapes, tmp_path, barrier, messages)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    text = []
    while sum(m.startswith("cached") for m in text) < 2:
        text.append(messages.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert sum("cache: writing" in m for m in text) == 1 and text.count("cached True") == 2, text


def test_unwritable_cache_location_is_a_user_error(tiny_cityscapes, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "_writable", lambda d: False)
    with pytest.raises(UserError, match="--no-cache"):
        CityscapesSegmentation(tiny_cityscapes, "val", val_transform(DOWN), profile=DOWN, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------- benchmark
def test_benchmark_runs_on_tiny_demo_data(tiny_cityscapes, tmp_path):
    result = run_script(
        "benchmarks/input_pipeline.py",
        "--data-dir",
        str(tiny_cityscapes),
        "--profile",
        "1",
        "--num-workers",
        "1",
        "--batches",
        "2",
        "--batch-size",
        "2",
        "--cache",
        "always",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--baseline",
        "original",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"samples/s: \d+\.\d", lines[-1]), lines
    assert any(line.startswith("cache: ") for line in lines)
    assert any(line.startswith("original (re-created): ") for line in lines)
    assert any(re.match(r"ratio ours / original: \d+\.\dx", line) for line in lines)


def test_benchmark_bad_data_dir_is_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("input_pipeline", REPO / "benchmarks" / "input_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, ["--data-dir", str(tmp_path / "nowhere"), "--batches", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such directory" in err and str(tmp_path / "nowhere") in err
