"""ONNX export of the deploy network (issue 16): BatchNorm folded, static shape, checked with ONNX Runtime."""

from __future__ import annotations

import csv
import importlib.util

import pytest
import torch
from conftest import run_script, trained_looking_model

import fast_scnn
from training.efficiency import deploy
from training.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs
HW = (256, 512)  # a 8x16 map at 1/32: pyramid bins 3 and 6 do not divide it (the legacy exporter's failure)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_looking_model()
    path = tmp_path_factory.mktemp("onnx") / "fast_scnn.onnx"
    folded = deploy.export_onnx(model, HW, path)
    return model, path, folded


def test_the_export_is_static_fp32_folded_and_matches_pytorch(exported):
    import onnx

    model, path, folded = exported
    assert folded == 44  # every Conv2d + BatchNorm2d pair of Fast-SCNN
    graph = onnx.load(str(path)).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    (image,), (logits,) = graph.input, graph.output
    assert (image.name, logits.name) == ("image", "logits")
    assert [d.dim_value for d in image.type.tensor_type.shape.dim] == [1, 3, *HW]
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim] == [1, 19, *HW]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    runtime = deploy.OnnxRuntimeForm(path, threads=1)
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, *HW) for _ in range(2)]
    agreement, max_abs = deploy.compare_onnx(model, runtime, inputs)
    with torch.no_grad():
        reference = model(inputs[0])
    assert reference.abs().max() > 0.1  # logits large enough for the comparison to mean something
    assert max_abs < 1e-3 and agreement > 0.999
    assert torch.allclose(runtime(inputs[0]), reference, atol=1e-3)
    # inputs of another size are resized to the static one
    assert deploy.compare_onnx(model, runtime, [torch.randn(1, 3, 128, 256)])[0] > 0.99


def test_missing_packages_are_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(
        UserError, match="--export-onnx: needs the Python packages onnx, onnxscript, onnxruntime; missing: onnxscript"
    ):
        deploy.export_onnx(fast_scnn.Model().eval(), HW, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_evaluate_efficiency_exports_checks_and_times_onnx(tmp_path):
    torch.save(trained_looking_model(2).state_dict(), tmp_path / "m.pth")
    out = tmp_path / "efficiency.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(tmp_path / "m.pth"),
        "--data-dir",
        "none",
        "--profile",
        "low",
        "--resolution",
        f"{HW[0]}x{HW[1]}",
        "--export-onnx",
        str(tmp_path / "m.onnx"),
        "--latency-runs",
        "2",
        "--min-seconds",
        "0",
        "--warmup",
        "1",
        "--deploy-dtype",
        "fp32",
        "--threads",
        "1",
        "--output-csv",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'm.onnx'}" in result.stdout and "ONNX Runtime" in result.stdout
    with open(out, newline="") as file:
        profile_row, onnx_row = list(csv.DictReader(file))
    assert profile_row["resolution"] == "288x576" and profile_row["latency_ms_onnxruntime"] == ""
    assert onnx_row["resolution"] == f"{HW[0]}x{HW[1]}"
    assert float(onnx_row["latency_ms_onnxruntime"]) > 0 and float(onnx_row["onnx_agreement"]) > 0.999
    assert 0 <= float(onnx_row["onnx_max_abs_diff"]) < 1e-3


def test_export_onnx_with_all_is_refused(tmp_path):
    torch.save(fast_scnn.Model().state_dict(), tmp_path / "m.pth")
    result = run_script(
        "evaluate_efficiency.py",
        "--all",
        str(tmp_path),
        "--data-dir",
        "none",
        "--export-onnx",
        str(tmp_path / "m.onnx"),
        "--output-csv",
        str(tmp_path / "e.csv"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "--export-onnx: expected one model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "e.csv").exists()


def test_compiled_forms_are_not_cut_off_by_dynamos_graph_limit():
    """Every compiled form of Fast-SCNN shares fast_scnn.Model.forward: 3 precisions at 3 input shapes are 9 graphs,
    past dynamo's default of 8 per function, after which it would silently run the form uncompiled."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=8):  # its default, restored afterwards
        deploy.DeployForm(fast_scnn.Model().eval(), torch.device("cpu"), torch.float32, compile=True)  # lazy compile
        assert dynamo_config.recompile_limit >= 3 * 3 * 2


def test_onnx_metadata_is_written_into_the_file(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    deploy.export_onnx(trained_looking_model(), (64, 128), path, metadata={"source_sha256": "abc"})
    assert deploy.OnnxRuntimeForm(path, 1).metadata == {"source_sha256": "abc"}
