"""The classes and profile of a model from its card for other data sets (a --profile scaled to the native size the
card records, as the stage scaled it), and the number of classes read from a model's weights (what a teacher
without a card is built for, and what a starting model without a card is checked with)."""

from __future__ import annotations

import pytest
import torch

import fast_scnn
from training.data.classes import CAMVID, CITYSCAPES
from training.errors import UserError
from training.evaluation.trained import read_trained
from training.models.build import build_model, load_teacher, num_classes_of
from training.models.card import profile_entry, write_card
from training.profiles import Profile


def test_a_profile_flag_is_scaled_to_the_native_size_the_card_records(tmp_path):
    path = tmp_path / "camvid.pth"
    torch.save(fast_scnn.Model(n_classes=11).state_dict(), path)
    trained_at = Profile("highest", 5, (480, 360), (352, 256))
    card = {"profile": profile_entry(trained_at), "native_size": "480x360", "classes": CAMVID.to_dict()}
    write_card(path, card)
    assert read_trained(path).profile == trained_at
    # profile 1 is 576x288 of Cityscapes' 2048x1024: the same fraction of 480x360, by hand: 135x101, patch 96x64
    low = read_trained(path, profile="low").profile
    assert (low.name, low.image_size, low.patch_size) == ("low", (135, 101), (96, 64))
    write_card(path, {**card, "classes": CITYSCAPES.to_dict(), "native_size": "2048x1024"})
    assert read_trained(path, profile="low").profile.image_size == (576, 288)  # Cityscapes: the table as written


@pytest.mark.parametrize("arch,classes", [("fast_scnn", 7), ("fast_scnn", 19), ("lraspp_mobilenet_v3_large", 3)])
def test_the_number_of_classes_is_read_from_the_weights(arch, classes):
    state = build_model(arch, classes).state_dict()
    assert num_classes_of(state, arch) == classes
    other = "lraspp_mobilenet_v3_large" if arch == "fast_scnn" else "fast_scnn"
    assert num_classes_of(state, other) is None  # not that architecture's weights


def test_a_teacher_is_built_for_the_classes_of_its_weights(tmp_path):
    torch.save(fast_scnn.Model(n_classes=5).state_dict(), tmp_path / "five.pth")
    teacher = load_teacher("fast_scnn", str(tmp_path / "five.pth"))
    assert teacher.num_classes == 5 and teacher(torch.zeros(2, 3, 64, 64)).shape == (2, 5, 64, 64)
    with pytest.raises(UserError, match="holds a fast_scnn model, but the architecture is fcn_resnet50"):
        load_teacher("fcn_resnet50", str(tmp_path / "five.pth"))
