"""evaluate_efficiency.py and training/efficiency/ (counting, latency, measure, sheet): counts, BatchNorm folding,
deploy form, CSV rows, errors."""

from __future__ import annotations

import copy
import csv
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_main, run_script
from torch import nn

import fast_scnn
from training.data.classes import CITYSCAPES, folder_class_set
from training.efficiency import allocator, counting, latency, measure, sheet
from training.efficiency import deploy as deploy_forms
from training.errors import UserError
from training.models.card import profile_entry, write_card
from training.profiles import PROFILES, resolve_profile

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, a machine shared with other jobs
HW = (64, 128)
FAST = ("--latency-runs", "2", "--min-seconds", "0", "--warmup", "0", "--agreement-images", "1", "--num-workers", "0")
NUMERIC = (
    "params",
    "macs",
    "flops",
    "flops_flop_counter",
    "latency_ms_plain",
    "latency_ms_plain_p10",
    "latency_ms_plain_p90",
    "latency_ms_deploy",
    "latency_ms_deploy_p10",
    "latency_ms_deploy_p90",
    "runs",
    "fps_plain",
    "fps_deploy",
    "speedup",
    "agreement",
    "threads",
)
ACCURACY = ("miou", "mean_dice", "pixel_accuracy", "miou_per_gflop", "dice_per_gflop")


def model_with_batchnorm_statistics(seed: int = 0) -> nn.Module:
    """A Fast-SCNN whose BatchNorm layers have non-trivial statistics and affine parameters (as after training)."""
    torch.manual_seed(seed)
    model = fast_scnn.Model()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_params_are_the_true_count():
    model = fast_scnn.Model()
    cost = counting.measure_cost(model, HW)
    assert cost.params == sum(p.numel() for p in model.parameters()) == counting.count_parameters(model)


def test_macs_equal_a_direct_thop_call_and_flops_are_twice_that():
    import thop

    model = fast_scnn.Model().eval()
    direct, _ = thop.profile(copy.deepcopy(model), inputs=(torch.randn(1, 3, *HW),), verbose=False)
    cost = counting.measure_cost(model, HW)
    assert cost.macs == int(direct)
    assert cost.flops == 2 * cost.macs
    # the cross-check is there; for Fast-SCNN the counters agree within 10% (thop adds BatchNorm, flop_counter not)
    assert cost.flops_flop_counter > 0 and cost.disagreement < 0.10 and cost.warning is None
    assert "Conv2d" in cost.by_type and "BatchNorm2d" in cost.by_type
    assert not any("total_ops" in name for name, _ in model.named_buffers())


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)  # a functional call: thop has no hook for it


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = nn.Conv2d(3, 8, 1, bias=False)
        self.hidden = FunctionalConv()

    def forward(self, x):
        return self.seen(x) + self.hidden(x)


def test_cross_check_warns_and_names_what_thop_cannot_see():
    cost = counting.measure_cost(Toy(), (16, 16))
    assert cost.macs == 3 * 8 * 16 * 16  # the 1x1 conv only
    assert cost.flops_flop_counter == 2 * (3 + 27) * 8 * 16 * 16
    assert cost.warning and "FunctionalConv" in cost.warning and "thop cannot see" in cost.warning


def test_folded_model_matches_the_unfolded_one():
    model = model_with_batchnorm_statistics()
    folded = copy.deepcopy(model)
    count = deploy_forms.fold_batchnorm(folded)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 40
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, *HW)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fold_needs_eval_mode():
    with pytest.raises(ValueError):
        deploy_forms.fold_batchnorm(fast_scnn.Model().train())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deploy_form_agrees_with_plain(dtype):
    model = model_with_batchnorm_statistics()
    deploy = deploy_forms.DeployForm(model, torch.device("cpu"), dtype)
    assert "BatchNorm folded" in deploy.describe() and "channels_last" in deploy.describe()
    x = torch.randn(1, 3, *HW)
    with torch.no_grad():
        out = deploy(deploy.prepare(x))
    assert out.shape == (1, 19, *HW)
    if dtype == torch.float32:
        assert measure.agreement(model, deploy, [x]) >= measure.AGREEMENT_THRESHOLD


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile needs a C compiler on CPU")
def test_compiled_deploy_form_freezes_weights_and_agrees_with_plain():
    from torch._dynamo.utils import counters

    model = model_with_batchnorm_statistics()
    deploy = deploy_forms.DeployForm(model, torch.device("cpu"), torch.float32, compile=True)
    assert "torch.compile" in deploy.describe()
    counters.clear()
    assert measure.agreement(model, deploy, [torch.randn(1, 3, 32, 64)]) >= measure.AGREEMENT_THRESHOLD
    if torch.backends.mkldnn.is_available():
        # frozen weights are what lets inductor prepack every conv for oneDNN (and fuse its ReLU / residual add);
        # without freezing the compiled graph calls the plain aten convolution
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] == sum(
            isinstance(m, nn.Conv2d) for m in model.modules()
        )


def test_mixed_form_runs_only_the_context_branch_in_bf16():
    model = model_with_batchnorm_statistics()
    deploy = deploy_forms.DeployForm(model, torch.device("cpu"), torch.bfloat16, scope="context")
    assert deploy.precision == "mixed-bf16" and "global_feature_extractor, fp32 elsewhere" in deploy.describe()
    seen = {}

    def record(name):
        def hook(module, inputs, out):
            seen[name] = out.dtype

        return hook

    for name in (
        "learning_to_downsample.conv.0",
        "global_feature_extractor.module.bottlenecks.0.0.expand.0",
        "feature_fusion.low_project.0",
        "classifier.conv",
    ):
        deploy.net.get_submodule(name).register_forward_hook(record(name))
    x = torch.randn(1, 3, *HW)
    out = deploy(deploy.prepare(x))
    assert seen == {
        "learning_to_downsample.conv.0": torch.float32,
        "global_feature_extractor.module.bottlenecks.0.0.expand.0": torch.bfloat16,
        "feature_fusion.low_project.0": torch.float32,
        "classifier.conv": torch.float32,
    }
    assert out.dtype == torch.float32 and out.shape == (1, 19, *HW)
    with torch.no_grad():
        reference = model(x)
    # only the context branch is rounded, so the logits move by a fraction of their spread, not more
    assert (out - reference).abs().max() < 0.05 * reference.std()


def test_a_model_without_context_branch_has_no_mixed_form():
    plain = nn.Sequential(nn.Conv2d(3, 19, 1)).eval()
    assert (
        deploy_forms.context_branch(plain) is None
        and deploy_forms.context_branch(fast_scnn.Model()) == "global_feature_extractor"
    )
    with pytest.raises(ValueError, match="no context branch"):
        deploy_forms.DeployForm(plain, torch.device("cpu"), torch.bfloat16, scope="context")


@pytest.mark.parametrize(
    "agreements, chosen, rejected",
    [
        ({"bf16": 0.9995, "mixed-bf16": 1.0, "fp32": 1.0}, "bf16", ""),
        ({"bf16": 0.99, "mixed-bf16": 0.9995, "fp32": 1.0}, "mixed-bf16", "bf16"),
        ({"bf16": 0.99, "mixed-bf16": 0.998, "fp32": 1.0}, "fp32", "bf16"),
    ],
)
def test_deploy_precision_steps_down_until_predictions_agree(monkeypatch, agreements, chosen, rejected):
    tried = []

    def fake_agreement(plain, deploy, batches):
        tried.append(deploy.precision)
        return agreements[deploy.precision]

    monkeypatch.setattr(measure, "agreement", fake_agreement)
    result = measure.evaluate_model(
        fast_scnn.Model(),
        [HW],
        torch.device("cpu"),
        torch.bfloat16,
        agreement_images=1,
        runs=1,
        min_seconds=0,
        warmup=0,
        log=lambda line: None,
    )
    assert tried == ["bf16", "mixed-bf16", "fp32"][: tried.index(chosen) + 1]
    assert result.precision == chosen and result.agreement == agreements[chosen]
    assert result.rejected_precision == rejected and (result.sizes[0].rejected is not None) == bool(rejected)
    (row,) = sheet.csv_rows(result, "m", "fast_scnn", resolve_profile("low"), torch.device("cpu"), 2, "glibc", "d", "c")
    assert row["dtype"] == chosen and row["rejected_dtype"] == rejected


def test_deploy_dtype_choices():
    cpu = torch.device("cpu")
    assert deploy_forms.choose_deploy_dtype(cpu, "mixed-bf16")[:2] == (torch.bfloat16, "context")
    assert deploy_forms.choose_deploy_dtype(cpu, "fp16")[:2] == (torch.float16, "all")
    assert deploy_forms.choose_deploy_dtype(cpu, "auto")[0] == (
        torch.bfloat16 if deploy_forms.native_bf16_cpu() else torch.float32
    )


def test_reduced_precision_falls_back_to_fp32_when_predictions_change(monkeypatch):
    monkeypatch.setattr(measure, "AGREEMENT_THRESHOLD", 1.01)  # nothing passes: the fallback must happen
    logged = []
    result = measure.evaluate_model(
        fast_scnn.Model(),
        [HW],
        torch.device("cpu"),
        torch.bfloat16,
        agreement_images=1,
        runs=1,
        min_seconds=0,
        warmup=0,
        log=logged.append,
    )
    assert result.dtype == torch.float32 and "falls back to fp32" in "\n".join(logged)
    assert "falls back to mixed-bf16" in "\n".join(logged)  # the mixed rung was tried in between
    assert result.accuracy is None and [size.hw for size in result.sizes] == [HW]
    # the rejected bf16 form is still timed alongside, for reference
    assert result.rejected_dtype == torch.bfloat16 and result.sizes[0].rejected.runs == 1
    (row,) = sheet.csv_rows(result, "m", "fast_scnn", resolve_profile("low"), torch.device("cpu"), 2, "glibc", "d", "c")
    assert row["dtype"] == "fp32" and row["rejected_dtype"] == "bf16" and float(row["rejected_latency_ms"]) > 0


def test_one_row_per_measured_size():
    result = measure.evaluate_model(
        fast_scnn.Model(),
        [HW, (32, 64)],
        torch.device("cpu"),
        torch.float32,
        agreement_images=1,
        runs=1,
        min_seconds=0,
        warmup=0,
        log=lambda _: None,
    )
    profile = resolve_profile("low")
    rows = sheet.csv_rows(result, "m", "fast_scnn", profile, torch.device("cpu"), 2, "glibc", "2026-01-01", "cmd")
    assert [row["resolution"] for row in rows] == ["64x128", "32x64"]
    assert (
        3 * rows[1]["macs"] < rows[0]["macs"] <= 4 * rows[1]["macs"]
        and rows[0]["dtype"] == "fp32"
        and rows[0]["miou"] == ""
    )


def test_latency_statistics():
    calls = []
    result = latency.measure_latency(
        {"a": (calls.append, 1), "b": (calls.append, 2)}, torch.device("cpu"), runs=5, min_seconds=0, warmup=2
    )
    assert calls[:4] == [1, 1, 2, 2] and calls[4:6] == [1, 2]  # warm-up, then interleaved
    for timed in result.values():
        assert timed.runs == 5
        assert timed.percentile_ms(10) <= timed.median_ms <= timed.percentile_ms(90)
    assert latency.Latency([1.0, 2.0, 3.0, 4.0, 5.0]).percentile_ms(90) == pytest.approx(4.6)


@pytest.mark.parametrize("text,expected", [("1024x2048", (1024, 2048)), (" 64X128 ", (64, 128))])
def test_parse_resolution(text, expected):
    assert measure.parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["0x128", "64", "64x-1", "axb", "64x128x3", "64.5x128"])
def test_parse_resolution_rejects(text):
    with pytest.raises(UserError, match="expected HxW with positive integers"):
        measure.parse_resolution(text)


def test_allocator_is_described():
    text = allocator.describe_allocator()
    assert text.startswith("glibc") if platform.libc_ver()[0] == "glibc" else text


def test_resolutions_csv_is_generated_from_the_profiles(tmp_path):
    shipped = REPO / "measurements" / "resolutions.csv"
    assert shipped.read_text(encoding="utf-8") == sheet.resolutions_csv_text(), (
        "measurements/resolutions.csv is stale: run python evaluate_efficiency.py --write-resolutions"
    )
    with open(shipped, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == list(PROFILES)
    assert [(int(r["image_width"]), int(r["image_height"])) for r in rows] == [v[0] for v in PROFILES.values()]
    assert [(int(r["patch_width"]), int(r["patch_height"])) for r in rows] == [v[1] for v in PROFILES.values()]
    result = run_script("evaluate_efficiency.py", "--write-resolutions", str(tmp_path / "r.csv"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.csv").read_text() == shipped.read_text()


# ------------------------------------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        torch.save(fast_scnn.Model().state_dict(), folder / f"{name}.pth")
    return folder


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_run_on_tiny_data_writes_one_well_formed_row(tiny_cityscapes, checkpoints, tmp_path):
    out = tmp_path / "efficiency.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--current-model-path",
        str(checkpoints / "a.pth"),
        "--data-dir",
        str(tiny_cityscapes),
        "--profile",
        "low",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--output-csv",
        str(out),
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout and "agreement" in result.stdout and "threads" in result.stdout
    (row,) = read_rows(out)
    assert (row["model"], row["arch"], row["profile"], row["resolution"]) == ("a", "fast_scnn", "low", "288x576")
    assert row["device"] == "cpu" and row["dtype"] in ("fp32", "bf16", "mixed-bf16") and row["date"]
    for key in NUMERIC + ACCURACY:
        float(row[key])
    assert int(row["params"]) == counting.count_parameters(fast_scnn.Model())
    assert int(row["flops"]) == 2 * int(row["macs"])
    assert 0 <= float(row["miou"]) <= 1 and 0 <= float(row["pixel_accuracy"]) <= 1
    assert float(row["agreement"]) >= measure.AGREEMENT_THRESHOLD
    assert "--current-model-path" in row["command"] and row["eval_size"] == "576x288"
    if platform.libc_ver()[0] == "glibc":
        assert "MALLOC_MMAP_THRESHOLD_" in row["allocator"] and "set by the tool" in row["allocator"]


@pytest.fixture(scope="module")
def all_without_data(checkpoints, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("all")
    out = cwd / "efficiency.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--all",
        str(checkpoints),
        "--data-dir",
        "none",
        "--profile",
        "1",
        "--output-csv",
        str(out),
        *FAST,
        cwd=cwd,
    )
    return result, read_rows(out) if out.exists() else []


@pytest.mark.slow
def test_all_gives_a_row_per_checkpoint_and_resolution(all_without_data):
    result, rows = all_without_data
    assert result.returncode == 0, result.stderr
    assert [(r["model"], r["resolution"]) for r in rows] == [("a", "288x576"), ("b", "288x576")]
    assert "appended 2 row(s)" in result.stdout


@pytest.mark.slow
def test_data_dir_none_leaves_accuracy_empty(all_without_data):
    result, rows = all_without_data
    assert result.returncode == 0, result.stderr
    for row in rows:
        assert all(row[key] == "" for key in ACCURACY + ("eval_size",))
        for key in NUMERIC:
            float(row[key])


def bad_files(folder):
    (folder / "text.pth").write_text("not a checkpoint")
    torch.save([1, 2, 3], folder / "list.pth")
    torch.save({"weight": torch.zeros(2)}, folder / "other.pth")
    torch.save(fast_scnn.Model(n_classes=5).state_dict(), folder / "five.pth")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--current-model-path", "{tmp}/missing.pth"], "no such file"),
        (["--current-model-path", "{tmp}/text.pth"], "not a readable PyTorch checkpoint"),
        (["--current-model-path", "{tmp}/list.pth"], "not a state_dict"),
        (["--current-model-path", "{tmp}/other.pth"], "not a fast_scnn state_dict"),
        (["--current-model-path", "{tmp}/five.pth"], "trained for 5 classes"),
        (["--current-model-path", "{ok}", "--profile", "ultra"], "unknown profile"),
        (["--current-model-path", "{ok}", "--resolution", "1024by2048"], "expected HxW with positive integers"),
        (["--current-model-path", "{ok}", "--resolution", "0x2048"], "expected HxW with positive integers"),
        (["--all", "{tmp}/nowhere"], "no such directory"),
        (["--current-model-path", "{ok}", "--all", "{tmp}"], "exactly one of"),
        pytest.param(
            ["--current-model-path", "{ok}", "--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, checkpoints, monkeypatch):
    import evaluate_efficiency

    bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a.format(tmp=tmp_path, ok=checkpoints / "a.pth") for a in args]
    out = tmp_path / "efficiency.csv"
    code, stdout, err = run_main(evaluate_efficiency.main, [*args, "--data-dir", "none", "--output-csv", str(out)])
    assert code == 2, stdout + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bad_input_as_a_process_is_one_line_and_exit_2(tmp_path, checkpoints):
    """The refusals above, in-process; here one of them as the user's command (no traceback from the script)."""
    bad_files(tmp_path)
    out = tmp_path / "efficiency.csv"
    argv = ["--current-model-path", str(tmp_path / "five.pth"), "--data-dir", "none", "--output-csv", str(out)]
    result = run_script("evaluate_efficiency.py", *argv, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "trained for 5 classes" in result.stderr and not out.exists()


def test_sheet_shows_one_aligned_line_per_row_with_giga_macs():
    row = {key: "" for key, _ in sheet.SHEET_COLUMNS}
    rows = [
        {**row, "model": "a", "macs": "7147000000", "flops": "14294000000", "dtype": "mixed-bf16"},
        {**row, "model": "longer-name", "macs": "566000000", "flops": "1132000000", "dtype": "fp32"},
    ]
    lines = sheet.format_sheet(rows).splitlines()
    assert len(lines) == 3 and lines[0].split()[:4] == ["model", "HxW", "params", "GMACs"]
    assert len({len(line) for line in lines}) == 1  # columns padded to one width
    assert lines[1].split()[:4] == ["a", "7.15", "14.29", "mixed-bf16"] and lines[2].split()[1] == "0.57"


def test_accuracy_per_gflop_only_where_the_accuracy_was_predicted_at_that_size():
    """Issue 21 item 11: the mIoU is predicted at the profile's image size, single-scale; dividing it by the GFLOPs
    of another --resolution (or by a single forward's GFLOPs under TTA) mixes two sizes."""
    profile = resolve_profile("low")  # image 576x288: hw (288, 576)
    result = measure.evaluate_model(
        fast_scnn.Model(),
        [profile.image_hw, HW],
        torch.device("cpu"),
        torch.float32,
        agreement_images=1,
        runs=1,
        min_seconds=0,
        warmup=0,
        log=lambda _: None,
    )
    scores = {"miou": 0.5, "mean_dice": 0.6, "pixel_accuracy": 0.9}
    result.accuracies = {"none": scores, "flip": scores}
    rows = sheet.csv_rows(result, "m", "fast_scnn", profile, torch.device("cpu"), 2, "glibc", "d", "c")
    by_key = {(row["resolution"], row["tta"]): row for row in rows}
    assert set(by_key) == {("288x576", "none"), ("288x576", "flip"), ("64x128", "none"), ("64x128", "flip")}
    own = by_key[("288x576", "none")]
    gflops = int(own["flops"]) / 1e9
    assert float(own["miou_per_gflop"]) == pytest.approx(0.5 / gflops, rel=1e-5)
    assert float(own["dice_per_gflop"]) == pytest.approx(0.6 / gflops, rel=1e-5)
    for key in (("64x128", "none"), ("64x128", "flip"), ("288x576", "flip")):
        row = by_key[key]
        assert row["miou"] == "0.500000"  # the accuracy is still shown, with its eval_size
        assert row["miou_per_gflop"] == "" and row["dice_per_gflop"] == "", key


# ---------------------------------------------------------------------------------------- the model card's defaults


def model_with_card(path, profile: str, classes=CITYSCAPES, seed: int = 0):
    """A model and its card as the stage writes them (training/models/card.py), at a profile of the table."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fast_scnn.Model(n_classes=classes.num_classes).state_dict(), path)
    card = {"experiment_id": path.stem, "script": "train.py", "arch": "fast_scnn"}
    card |= {"profile": profile_entry(resolve_profile(profile)), "classes": classes.to_dict()}
    write_card(path, card)


@pytest.mark.slow
def test_a_model_is_measured_at_the_profile_its_card_records(tmp_path):
    model_with_card(tmp_path / "models" / "demo.pth", "medium")
    result = run_script(
        "evaluate_efficiency.py", "--model-path", "models/demo.pth", "--data-dir", "none", *FAST, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model card models/demo.json" in result.stdout and "profile 2 'medium'" in result.stdout
    (row,) = read_rows(tmp_path / "measurements" / "efficiency.csv")  # --output-dir defaults to the current folder
    assert (row["model"], row["profile"], row["resolution"]) == ("demo", "medium", "384x768")

    out = tmp_path / "elsewhere"
    result = run_script(
        "evaluate_efficiency.py",
        *("--model-path", "models/demo.pth", "--data-dir", "none", "--profile", "low", "--output-dir", str(out)),
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--profile low overrides it" in result.stdout
    (row,) = read_rows(out / "measurements" / "efficiency.csv")
    assert (row["profile"], row["resolution"]) == ("low", "288x576")
    assert len(read_rows(tmp_path / "measurements" / "efficiency.csv")) == 1  # the first sheet is left alone


@pytest.mark.slow
def test_the_cards_classes_build_the_model_and_other_classes_are_not_scored_on_cityscapes(tmp_path):
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255))
    five = folder_class_set(("road", "car", "tree", "sky", "person"), colours, 255, None, "test")
    model_with_card(tmp_path / "five.pth", "low", five)
    out = tmp_path / "sheet.csv"
    result = run_script(
        "evaluate_efficiency.py",
        "--model-path",
        "five.pth",
        "--data-dir",
        "none",
        "--output-csv",
        str(out),
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = read_rows(out)
    assert int(row["params"]) == counting.count_parameters(fast_scnn.Model(n_classes=5))
    assert row["resolution"] == "288x576" and "folder: 5 classes" in result.stdout
    result = run_script(  # scored on its own data set only (issue 24): Cityscapes data is refused in one line
        "evaluate_efficiency.py",
        "--model-path",
        "five.pth",
        "--dataset",
        "cityscapes",
        "--data-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "holds cityscapes: 19 classes" in result.stderr and "(or --data-dir none)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(read_rows(out)) == 1


@pytest.mark.slow
def test_models_without_a_card_are_cityscapes_models_with_a_note(all_without_data):
    result, rows = all_without_data
    assert result.stdout.count("note: no model card") == 2 and "cityscapes: 19 classes" in result.stdout
