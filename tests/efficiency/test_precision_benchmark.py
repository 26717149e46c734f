"""benchmarks/precision.py: which parts of a model keep its predictions in bf16, part by part, and what they weigh."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fast_scnn import Model
from training.efficiency.deploy import fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "precision.py"


@pytest.fixture(scope="module")
def precision():
    spec = importlib.util.spec_from_file_location("precision_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path: it imports inference.py's helpers
    yield module
    sys.modules.pop("inference", None)


def folded_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = Model().eval()
    fold_batchnorm(model)
    return model


def test_parts_are_the_weighted_children_and_grandchildren_without_the_training_heads(precision):
    parts = precision.parts_of(Model(aux=True).eval())
    assert parts[:4] == [
        "learning_to_downsample",
        "learning_to_downsample.conv",
        "learning_to_downsample.dsconv1",
        "learning_to_downsample.dsconv2",
    ]
    assert "global_feature_extractor.pyramid_pooling" in parts and "classifier.conv" in parts
    assert not any(part.startswith("aux_heads") for part in parts)  # training only
    assert "classifier.dropout" not in parts and "feature_fusion.relu" not in parts  # no weights: nothing to cast


def test_conv_macs_equal_a_count_by_hand(precision):
    macs = precision.conv_macs(folded_model(), torch.zeros(1, 3, 64, 128))
    assert macs["learning_to_downsample.conv.0"] == 32 * 32 * 64 * 3 * 3 * 3  # stride 2: 32x64 outputs, 3x3x3 each
    assert macs["classifier.conv"] == 19 * 8 * 16 * 128  # 1x1 at 1/8: 8x16 outputs of 128 inputs
    assert macs["learning_to_downsample.dsconv1.depthwise.0"] == 32 * 16 * 32 * 9  # depthwise: 9 per output
    assert precision.share(macs, "classifier") == pytest.approx(
        sum(count for name, count in macs.items() if name.startswith("classifier.")) / sum(macs.values())
    )


def test_a_part_in_bf16_disagrees_exactly_as_that_part_cast_by_hand(precision):
    model = folded_model(seed=3)
    images = torch.randn(2, 3, 64, 128)
    logit_conv = copy.deepcopy(model.classifier.conv).to(torch.bfloat16)
    with torch.inference_mode():
        reference = torch.cat([model(image[None]) for image in images]).argmax(1)
        high = model.learning_to_downsample(images)
        features = model.classifier.dsconv2(
            model.classifier.dsconv1(model.feature_fusion(high, model.global_feature_extractor(high)))
        )
        logits = logit_conv(features.bfloat16()).float()  # the 1x1 logit conv alone in bf16, by hand
        expected = F.interpolate(logits, size=(64, 128), mode="bilinear", align_corners=False).argmax(1)
    expected_agreement = float((expected == reference).double().mean())
    assert expected_agreement < 1.0  # random weights: bf16 flips some pixels (else this test would prove nothing)
    net = precision.reduced(model, ["classifier.conv"], torch.bfloat16)
    assert precision.agreement(net, images, reference) == expected_agreement
    assert precision.agreement(precision.reduced(model, [""], torch.float32), images, reference) == 1.0


def test_the_table_and_its_last_line(precision, capsys):
    precision.main(["--size", "64x128", "--images", "1"])
    out = capsys.readouterr().out
    rows = dict(
        (match[1], (float(match[2]), float(match[3])))
        for match in re.finditer(r"^  (\S+)\s+(\d+\.\d)%\s+(\d+\.\d{3})%$", out, re.MULTILINE)
    )
    top = ["learning_to_downsample", "global_feature_extractor", "feature_fusion", "classifier"]
    assert set(top) <= set(rows)
    assert sum(rows[part][0] for part in top) == pytest.approx(100.0, abs=0.3)  # disjoint parts: all the MACs
    passing = [part for part in top if rows[part][1] >= 99.9]
    last = out.strip().splitlines()[-1]
    expected = ", ".join(passing) or "none"
    assert re.fullmatch(
        rf"alone at >= 99\.9%: {re.escape(expected)} \(\d+\.\d% of the MACs\); all of the network: "
        r"\d+\.\d{3}%",
        last,
    ), last


def test_bad_images_is_one_line_and_exit_2(precision, capsys):
    with pytest.raises(SystemExit) as stop:
        precision.main(["--images", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --images 0: expected at least one painted scene"
