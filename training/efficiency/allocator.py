"""The C allocator the tools measure with: glibc's malloc tuned at start-up, and a description for the sheet.

Imports nothing heavy: an entry point calls `tune_malloc` before it imports torch, since glibc reads its settings
only when a process starts.
"""

from __future__ import annotations

import os
import platform
import sys

TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
MARKER = "EVALUATE_EFFICIENCY_TUNED_MALLOC"  # set in the restarted process: the tool chose the settings
MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)


def tune_malloc(argv: list[str]) -> None:
    """Restart once with large mmap/trim thresholds: glibc then keeps the big activation buffers between runs
    instead of mmap-ing and unmapping (and page-faulting) them on every call, which costs ~2x CPU latency.
    glibc reads these settings only at start-up; settings the user made, or --malloc system, are left alone."""
    choice = next((a.split("=", 1)[1] for a in argv if a.startswith("--malloc=")), None)
    choice = choice or next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--malloc"), "tuned")
    user_set = any(os.environ.get(name) for name in (*TUNED_MALLOC, "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES"))
    if choice == "tuned" and not os.environ.get(MARKER) and not user_set and platform.libc_ver()[0] == "glibc":
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED_MALLOC, MARKER: "1"})


def describe_allocator() -> str:
    """The C allocator settings this process started with (glibc reads them once, at start-up)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"{platform.system()} default allocator"
    settings = [f"{name}={os.environ[name]}" for name in MALLOC_VARIABLES if os.environ.get(name)]
    described = "glibc " + (" ".join(settings) if settings else "default (dynamic mmap threshold)")
    return described + (" (set by the tool)" if os.environ.get(MARKER) else "")
