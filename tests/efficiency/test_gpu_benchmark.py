"""benchmarks/gpu.py runs (on the CPU, --quick) and prints both tables: it is the first command on a GPU machine
and must not rot where no GPU is at hand."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import run_script


def test_gpu_benchmark_quick_on_cpu(tmp_path):
    result = run_script(
        "benchmarks/gpu.py", "--device", "cpu", "--quick", cwd=tmp_path, timeout=240, env={"OMP_NUM_THREADS": "1"}
    )  # one thread, as the other stage tests (a shared machine)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    training = out[out.index("training (img/s") : out.index("inference ")]
    rows = [line.split() for line in training.splitlines()[2:] if line.strip()]
    assert [(r[0], r[1]) for r in rows] == [(p, v) for p in "135" for v in ("fp32", "amp", "amp+cl", "amp+cl+compile")]
    for row in rows:
        if row[1] != "amp+cl+compile":
            assert float(row[2]) > 0 and float(row[3]) > 0, row
    inference = out[out.index("inference ") :]
    assert re.search(r"^plain \(eval, fp32\)\s+\d+\.\d+\s+\d+\.\d", inference, re.MULTILINE)
    assert re.search(r"^deploy \(.*\)\s+\d+\.\d+\s+\d+\.\d", inference, re.MULTILINE)
    assert not list(tmp_path.iterdir())  # everything it wrote was in its temporary directory


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_gpu_benchmark_without_cuda_is_one_line(tmp_path):
    result = run_script("benchmarks/gpu.py", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: --device cuda: CUDA is not available")
