"""Each train*.py keeps its own copy of the resolution profile table (a user reads and edits it in the script it
drives); the copies shipped with the project must agree with `training/profiles.py`, which the tools and
`measurements/resolutions.csv` use."""

from __future__ import annotations

import importlib

import pytest

from training.profiles import PROFILES, resolve_profile

SCRIPTS = ("train", "train_dice", "train_distillation", "train_distillation_dice")


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_script_table_equals_the_shared_one(name):
    script = importlib.import_module(name)
    assert script.PROFILES == PROFILES
    assert list(script.PROFILES) == list(PROFILES)  # the order gives the numbers 1-5
    assert resolve_profile(script.PROFILE, script.PROFILES).name == script.PROFILE


def test_the_shared_table_is_the_design_s():
    # (W x H) image and patch of the five profiles of the original project
    assert [(name, image, patch) for name, (image, patch) in PROFILES.items()] == [
        ("low", (576, 288), (448, 224)),
        ("medium", (768, 384), (576, 288)),
        ("high", (1024, 512), (768, 384)),
        ("higher", (1536, 768), (1152, 576)),
        ("highest", (2048, 1024), (1536, 768)),
    ]
