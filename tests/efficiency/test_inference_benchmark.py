"""benchmarks/inference.py --quick: every form side by side, agreement checked, and the speed-up line last."""

from __future__ import annotations

import os
import platform
import re

import pytest
import torch
from conftest import run_script

LAST_LINE = re.compile(r"speed-up over ONNX Runtime fp32: fp32 (\d+\.\d\d)x, best (\d+\.\d\d)x \((.+)\)")
ROW = re.compile(
    r"^  (?P<form>\S+(?: \S+)*?)\s{2,}(?P<precision>\S+)\s+(?P<median>\d+\.\d)\s+(?P<p10>\d+\.\d)\s+(?P<p90>\d+\.\d)"
    r"\s+(?P<plain>\d+\.\d\d)\s+(?P<ort>\d+\.\d\d)\s+(?P<agreement>\d+\.\d{3})%(?P<rejected> REJECTED)?$"
)


def tables(out: str) -> dict[str, list[dict]]:
    """'CPU 128x256, batch 1' -> its rows, parsed."""
    found, current = {}, None
    for line in out.splitlines():
        if re.match(r"^CPU \d+x\d+, batch \d+:$", line):
            current = found.setdefault(line[:-1], [])
        elif current is not None and (match := ROW.match(line)):
            current.append(match.groupdict())
        elif not line.startswith("  "):
            current = None
    return found


def ratio_bounds(numerator: float, denominator: float) -> tuple[float, float]:
    """What a ratio printed to 2 decimals can be when both times were printed to 0.1 ms (at 128x256 a median of a
    few ms: the rounding alone moves the ratio by a few percent)."""
    return (numerator - 0.05) / (denominator + 0.05) - 0.005, (numerator + 0.05) / max(denominator - 0.05, 1e-9) + 0.005


@pytest.mark.slow
def test_quick_run_times_every_form_checks_agreement_and_ends_with_the_speed_up(tmp_path):
    result = run_script("benchmarks/inference.py", "--quick", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"intra-op threads \d+.*ONNX Runtime .*\(intra-op threads \d+, inter-op 1; ", out)
    chosen = any(name.startswith("MALLOC_") or name in ("LD_PRELOAD", "GLIBC_TUNABLES") for name in os.environ)
    if platform.libc_ver()[0] == "glibc" and not chosen:  # the benchmark restarted itself with malloc tuned
        assert "allocator: glibc MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 (set by" in out
    assert re.search(r"^allocator: .+; load average at the start: \d", out, re.MULTILINE)
    assert "random weights: their logit margins are ~1e-5, so the agreement check says little" in out  # no model
    if "OMP_WAIT_POLICY" not in os.environ:
        assert "OMP_WAIT_POLICY PASSIVE" in out  # its default: threads that wait do not spin
    found = tables(out)
    assert list(found) == ["CPU 128x256, batch 1", "CPU 128x256, batch 2"]
    for rows in found.values():
        names = [row["form"] for row in rows]
        assert names[0] == "plain" and names[-2:] == ["onnxruntime cpu", "onnxruntime cpu no-spin"]
        assert {"fp32 folded", "fp32", "fp32 compiled"} <= set(names)
        for row in rows:
            agreement = float(row["agreement"])
            assert (agreement >= 99.9) == (row["rejected"] is None), row  # below 99.9% is marked, at or above not
        onnx = min(float(row["median"]) for row in rows if row["form"].startswith("onnxruntime"))
        for row in rows:  # the "x ORT" column is the faster ONNX Runtime's median over the form's
            low, high = ratio_bounds(onnx, float(row["median"]))
            assert low <= float(row["ort"]) <= high, row
    if not torch.cuda.is_available():
        assert "CUDA: not available here" in out
    last = out.strip().splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match, last
    fp32, best, form = float(match[1]), float(match[2]), match[3]
    rows = {row["form"]: row for row in found["CPU 128x256, batch 1"]}
    candidates = {name: row for name, row in rows.items() if not row["rejected"] and name not in ("plain",)}
    candidates = {name: row for name, row in candidates.items() if not name.startswith("onnxruntime")}
    # the best is the agreeing form with the highest ratio; fp32 the same among the fp32 ones
    assert form in candidates and float(candidates[form]["ort"]) == pytest.approx(best, abs=0.011)
    assert best == pytest.approx(max(float(row["ort"]) for row in candidates.values()), abs=0.011)
    fp32_rows = [row for row in candidates.values() if row["precision"] == "fp32"]
    assert fp32 == pytest.approx(max(float(row["ort"]) for row in fp32_rows), abs=0.011)
    assert not list(tmp_path.iterdir())  # the ONNX files went to a temporary directory that is gone


def test_bad_batches_are_one_line_and_exit_2(tmp_path):
    result = run_script("benchmarks/inference.py", "--batches", "0", "--no-onnx", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --batches '0': expected comma-separated positive integers, e.g. 1,8"
