"""--backend onnxruntime (training/efficiency/backends.py): ONNX Runtime runs the model like torch does, its ONNX
file exported on first use, cached next to the model, exported again when the weights change; evaluate_efficiency.py
writes a row per backend with the same mIoU; a device ONNX Runtime cannot run on is refused up front."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import run_script, trained_looking_model

from training.efficiency import backends
from training.errors import UserError
from training.models.card import content_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs
HW = (64, 128)
FAST = ("--latency-runs", "2", "--min-seconds", "0", "--warmup", "0", "--agreement-images", "1", "--num-workers", "0")


def saved_model(path, seed: int) -> torch.nn.Module:
    """A Fast-SCNN with BatchNorm statistics as after training (a fresh one's logits are all ~1e-5), saved."""
    model = trained_looking_model(seed)
    torch.save(model.state_dict(), path)
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding, relative to the logits' scale."""
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_the_cache_file_sits_next_to_the_model_one_per_size(tmp_path):
    assert backends.onnx_cache_path(tmp_path / "models" / "run-05.pth", (512, 1024)) == (
        tmp_path / "models" / "run-05.512x1024.onnx"
    )


@pytest.mark.slow
def test_onnx_runtime_gives_the_models_logits_and_its_file_is_cached_until_the_weights_change(tmp_path):
    path = tmp_path / "m.pth"
    model = saved_model(path, seed=0)
    x = torch.randn(3, 3, *HW, generator=torch.Generator().manual_seed(1))  # a batch of 3: run image by image
    said = []
    backend = backends.OnnxBackend(model, path, torch.device("cpu"), 1, said.append)
    with torch.no_grad():
        assert close(backend(x), model(x))
    cached = backends.onnx_cache_path(path, HW)
    assert [line for line in said if str(cached) in line and "first use" in line] and len(said) == 1
    assert backend.session(HW).metadata == {backends.HASH_KEY: content_hash(path)}
    stamp = cached.stat().st_mtime_ns

    said.clear()  # a second run: the cached file is used as it is
    again = backends.OnnxBackend(model, path, torch.device("cpu"), 1, said.append)
    with torch.no_grad():
        assert close(again(x), model(x))
    assert said == [] and cached.stat().st_mtime_ns == stamp

    changed = saved_model(path, seed=1)  # new weights in the same file: the cached export is stale
    fresh = backends.OnnxBackend(changed, path, torch.device("cpu"), 1, said.append)
    with torch.no_grad():
        assert close(fresh(x), changed(x))
        assert not close(fresh(x), model(x))
    assert len(said) == 1 and "weights changed" in said[0]
    assert fresh.session(HW).metadata[backends.HASH_KEY] == content_hash(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.64x128.onnx", "m.pth"]  # no temporary file left


def test_a_cuda_device_needs_a_build_with_a_gpu_provider(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UserError, match=r"^--backend onnxruntime: the device is CUDA but ONNX Runtime .* no GPU"):
        backends.check_backend(["torch", "onnxruntime"], torch.device("cuda"))
    backends.check_backend(["onnxruntime"], torch.device("cpu"))  # the CPU provider is in every build
    backends.check_backend(["torch"], torch.device("cuda"))  # torch alone needs no ONNX Runtime
    assert "GPU providers: unavailable in this build" in backends.describe_providers()
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    backends.check_backend(["onnxruntime"], torch.device("cuda"))
    assert backends.describe_providers().endswith("GPU providers: CUDAExecutionProvider")


@pytest.mark.slow
def test_a_row_per_backend_with_the_same_miou_on_the_demo_data(tiny_cityscapes, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    saved_model(models / "a.pth", seed=0)
    out = tmp_path / "efficiency.csv"
    args = ("--model-path", "models/a.pth", "--data-dir", str(tiny_cityscapes), "--profile", "low", "--device", "cpu")
    result = run_script(
        "evaluate_efficiency.py",
        *args,
        "--backend",
        "torch",
        "onnxruntime",
        "--output-csv",
        str(out),
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(row["backend"], row["resolution"]) for row in rows] == [("torch", "288x576"), ("onnxruntime", "288x576")]
    torch_row, ort_row = rows
    assert float(ort_row["miou"]) == pytest.approx(float(torch_row["miou"]), abs=1e-4)
    assert float(ort_row["mean_dice"]) == pytest.approx(float(torch_row["mean_dice"]), abs=1e-4)
    assert ort_row["dtype"] == "fp32" and ort_row["deploy"].startswith("ONNX Runtime, CPU execution provider")
    assert float(ort_row["agreement"]) >= 0.999 and float(ort_row["latency_ms_deploy"]) > 0
    assert (models / "a.288x576.onnx").is_file()  # exported on first use, next to the model
    assert "GPU providers:" in result.stdout
    assert result.stdout.count("exporting models/a.288x576.onnx (first use") == 1
