"""The shell scripts a user or a job runs (main*.sh, jobscript_slurm*.sh, training/**/*.sh): bash 4.2, each flag once,
nothing that hides a recipe's values, .env that holds only the environment, and the Quick start's `--demo`.

bash 4.2 (still on some clusters) aborts on `"${ARR[@]}"` of an empty array under `set -u` ("unbound variable";
bash 4.4 stopped doing so). Neither BASH_COMPAT=4.2, `shopt -s compat42` nor `bash --posix` brings that abort back
on the bash 5.2 here, and no bash 4.2 can be installed offline: the rule is checked in the scripts' text instead. An
array may be expanded only when every assignment of it holds at least one word (`NAME=(word ...)`), never one
that can leave it empty (`NAME=()`, `local -a NAME`, `mapfile`, `read -a`), or in the guarded form
`${NAME[@]+"${NAME[@]}"}`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chain_helpers import REPO, copy_repo

EXPANSION = re.compile(r"\$\{!?(\w+)\[[@*]\][^}]*\}")
GUARDED = re.compile(r"\$\{(\w+)\[@\]\+\"\$\{\1\[@\]\}\"\}")


def shell_scripts() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / name for name in listed.stdout.split()]


def arrays_that_can_be_empty(text: str) -> list[str]:
    """The arrays that `text` expands although an assignment may leave them empty (see the module docstring)."""
    text = GUARDED.sub("", text)
    text = re.sub(r"\$\{#\w+\[[@*]\]\}", "", text)  # lengths are fine
    problems = []
    for name in sorted(set(EXPANSION.findall(text))):
        empty = re.search(
            rf"(^|[\s;(]){name}=\(\s*\)|(local|declare)\s+-a\s+{name}\s*($|[;\n])|mapfile\s.*\b{name}\b|"
            rf"read\s.*-a\s+{name}\b",
            text,
            re.M,
        )
        filled = re.search(rf"(^|[\s;(]){name}\+?=\(\s*[^)\s]", text, re.M)
        if empty or not filled:
            problems.append(name)
    return problems


def test_the_rule_finds_what_bash_4_2_aborts_on():
    assert arrays_that_can_be_empty('a=()\necho "${a[@]}"') == ["a"]
    assert arrays_that_can_be_empty('local -a extra\nf "${extra[@]}"') == ["extra"]
    assert arrays_that_can_be_empty('mapfile -t lines < x\nf "${lines[@]}"') == ["lines"]
    assert arrays_that_can_be_empty('a=(x "$@")\nf "${a[@]}" "${#a[@]}"') == []
    assert arrays_that_can_be_empty('a=()\nf ${a[@]+"${a[@]}"}') == []


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_expand_no_array_that_can_be_empty(script):
    assert arrays_that_can_be_empty(script.read_text()) == []


# ------------------------------------------------------------------------------------------------ main*.sh
STUB_PYTHON = '#!/bin/bash\necho "python: $*"\n'


@pytest.fixture
def stub_repo(tmp_path) -> tuple[Path, dict]:
    """A copy of the repository and an environment whose PYTHON prints its arguments instead of training."""
    repo = copy_repo(tmp_path / "repo")
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    return repo, {**env, "PYTHON": str(stub)}


def main_sh(repo: Path, env: dict, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / script), *args], env=env, capture_output=True, text=True, timeout=60)


def printed_command(stdout: str) -> list[str]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("+ ") and ".py" in line]
    return line.split()[3:]  # after "+ PYTHON SCRIPT"


@pytest.mark.parametrize("script", ["main.sh", "main_dice.sh", "main_distillation.sh", "main_distillation_dice.sh"])
def test_main_sh_passes_the_flags_it_is_given_and_nothing_else(stub_repo, script):
    repo, env = stub_repo
    result = main_sh(repo, env, script, "--recipe", "mmseg", "--profile", "2")
    assert result.returncode == 0, result.stderr
    # nothing that would hide the recipe's values (weight decay, lr, ...) or the script's defaults
    assert printed_command(result.stdout) == ["--recipe", "mmseg", "--profile", "2"]
    train = script.replace("main", "train").replace(".sh", ".py")
    assert result.stdout.splitlines()[-1] == f"python: {train} --recipe mmseg --profile 2"


def test_demo_prints_each_flag_once_and_the_users_flags_win(stub_repo):
    repo, env = stub_repo
    result = main_sh(repo, env, "main.sh", "--demo", "--epochs", "2", "--num-workers=0")
    assert result.returncode == 0, result.stderr
    assert "python: -m training.demo_data --root data/demo_cityscapes" in result.stdout
    words = printed_command(result.stdout)
    flags = [w.split("=")[0] for w in words if w.startswith("--")]
    assert len(flags) == len(set(flags)), words
    assert words[-3:] == ["--epochs", "2", "--num-workers=0"]  # the user's, not the demo's 30 and 2
    assert "--experiment-id demo-fastscnn-training-experiment-01 --restart" in " ".join(words)


def test_dotenv_sets_the_environment_and_is_warned_about_stage_settings(stub_repo):
    repo, env = stub_repo
    (repo / ".env").write_text("WANDB_MODE=offline\nexport PROFILE=5\nEXPERIMENT_ID=x\n")
    result = main_sh(repo, env, "main.sh", "--profile", "1")
    assert result.returncode == 0, result.stderr
    assert printed_command(result.stdout) == ["--profile", "1"]
    assert result.stderr.splitlines() == [
        f"warning: .env sets {name}, which no script reads: a stage's settings are flags (runs/NN.toml, or on the "
        "command line: bash main.sh --help)"
        for name in ("EXPERIMENT_ID", "PROFILE")
    ]


@pytest.mark.slow
def test_demo_quick_start_trains_a_stage(tmp_path):
    # the Quick start's first command, here with one epoch: the demo data written, a stage trained on the CPU
    repo = copy_repo(tmp_path / "repo")
    env = {**os.environ, "PYTHON": sys.executable, "WANDB_MODE": "disabled"}
    result = subprocess.run(
        ["bash", str(repo / "main.sh"), "--demo", "--epochs", "1"], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 1/1 |" in result.stdout and (repo / "models" / "demo-fastscnn-training-experiment-01.pth").is_file()
