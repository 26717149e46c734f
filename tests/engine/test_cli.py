"""The training scripts' shared command line (training/engine/cli.py): the checks of the distillation temperature
(issue 21.4) and the flags that place a stage in its run."""

from __future__ import annotations

import pytest

from training.engine.cli import add_distillation_args, check_args, get_args_parser
from training.engine.recipes import resolve_recipe
from training.errors import UserError


def distillation_args(*argv: str):
    parser = get_args_parser("test", "low")
    add_distillation_args(parser)
    args = parser.parse_args(["--trained-teacher-model-path", "t.pth", *argv])
    resolve_recipe(args, 1)
    return args


@pytest.mark.parametrize("kd_loss", ["kl", "cwd"])
@pytest.mark.parametrize("temperature", ["1", "1.0", "4", "10"])
def test_usual_temperatures_train_without_a_word(kd_loss, temperature, capsys):
    # T = 1 is CWD's own Cityscapes setting (and DIST's default); the original's KL used 4
    check_args(distillation_args("--kd-loss", kd_loss, "--temperature", temperature))
    assert capsys.readouterr().err == ""
    warnings = []
    check_args(distillation_args("--kd-loss", kd_loss, "--temperature", temperature), warn=warnings.append)
    assert warnings == []


@pytest.mark.parametrize("temperature", ["0.5", "0.1", "20"])
def test_unusual_temperatures_train_with_a_warning(temperature, capsys):
    check_args(distillation_args("--kd-loss", "cwd", "--temperature", temperature))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: --temperature {float(temperature):g} is unusual for --kd-loss cwd")
    assert err.count("\n") == 1


@pytest.mark.parametrize("temperature", ["0", "-1"])
def test_a_temperature_of_zero_or_below_is_refused(temperature):
    with pytest.raises(UserError, match=rf"^--temperature {float(temperature)}: expected a number > 0$"):
        check_args(distillation_args("--temperature", temperature))


def test_run_and_stage_name_the_stages_place_and_default_to_none():
    args = distillation_args()
    assert (args.run, args.stage) == (None, None)
    args = distillation_args("--run", "9", "--stage", "3")
    assert (args.run, args.stage) == ("9", 3)
