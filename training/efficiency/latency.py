"""Batch-1 latency of several forms of a model, timed in turn run by run (they see the same background load).

Warm-up, then runs until each form has at least `runs` timings and `min_seconds` of them; median, p10 and p90; CUDA
synchronised around every run. The allocator the process runs with changes CPU latency by 2x
(training/efficiency/allocator.py): a figure is stated with it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Latency:
    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.times_ms)
        position = q / 100 * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    def describe(self) -> str:
        """'12.3 ms (p10 12.0, p90 13.1, 50 runs)'."""
        return (
            f"{self.median_ms:.1f} ms (p10 {self.percentile_ms(10):.1f}, p90 {self.percentile_ms(90):.1f},"
            f" {self.runs} runs)"
        )


@torch.inference_mode()
def measure_latency(
    forms: dict[str, tuple[Callable, torch.Tensor]],
    device: torch.device,
    runs: int = 50,
    min_seconds: float = 5.0,
    warmup: int = 5,
) -> dict[str, Latency]:
    """Batch-1 latency of several forms, each `(callable, its input)`, timed in turn run by run.

    Every form gets `warmup` untimed runs, then timed runs continue until each form has at least `runs` timings
    that add up to at least `min_seconds`. On CUDA the device is synchronised before and after each run.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for call, x in forms.values():
        for _ in range(warmup):
            call(x)
    sync()
    times: dict[str, list[float]] = {name: [] for name in forms}
    while any(len(t) < runs or sum(t) < 1000 * min_seconds for t in times.values()):
        for name, (call, x) in forms.items():
            sync()
            start = time.perf_counter()
            call(x)
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: Latency(t) for name, t in times.items()}
