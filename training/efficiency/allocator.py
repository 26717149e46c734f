"""The C allocator a latency measurement runs with: glibc's malloc tuned at start-up, or one the user preloaded.

CPU latency of this network changes by up to 2x with glibc's defaults (the dynamic mmap threshold hands the big
activation buffers back to the kernel after every call and page-faults them in again on the next). glibc reads its
settings once, when the process starts, so a tool that wants them restarts itself once (`restart_with_tuned_malloc`,
before it imports torch). Nothing here imports torch.
"""

from __future__ import annotations

import os
import platform
import sys

# thresholds far above any activation buffer: glibc keeps freed buffers for the next call (no mmap/munmap churn)
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
GLIBC_SETTINGS = (*TUNED_MALLOC, "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
MARKER = "FAST_SCNN_TUNED_MALLOC"


def preloaded_allocator() -> str | None:
    """The allocator LD_PRELOAD replaces malloc with (jemalloc, tcmalloc, mimalloc), if any."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if name in preload), None)


def restart_with_tuned_malloc(choice: str = "tuned") -> None:
    """Restart this process once (same interpreter and arguments) with TUNED_MALLOC in its environment.

    Nothing happens for `choice` "system", off glibc, after the restart, or where the user set a glibc malloc
    setting or preloaded another allocator (their choice is measured as it is).
    """
    user_set = any(os.environ.get(name) for name in GLIBC_SETTINGS) or preloaded_allocator()
    if choice != "tuned" or os.environ.get(MARKER) or user_set or platform.libc_ver()[0] != "glibc":
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED_MALLOC, MARKER: "1"})


def describe_allocator() -> str:
    """One line: the allocator and its settings, as this process started."""
    preloaded = preloaded_allocator()
    if preloaded:
        return f"{preloaded} (LD_PRELOAD={os.environ['LD_PRELOAD']})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"{platform.system()} default allocator"
    settings = [f"{name}={os.environ[name]}" for name in GLIBC_SETTINGS if os.environ.get(name)]
    return "glibc malloc " + (" ".join(settings) if settings else "default (dynamic mmap threshold)")
