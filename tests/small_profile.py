"""Run a training script with a small resolution profile table, for the tests that train several stages.

Each train*.py reads its module-level PROFILES table when `main` runs; this runner replaces that table with
SMALL_PROFILES (the tiny demo images' own size) and then runs the script's `main` through `run_cli`, exactly as the
script's `if __name__ == "__main__"` block does. Everything else (arguments, stage loop, files) is the real thing.

    python tests/small_profile.py train.py --data-dir ... --epochs 3        (what a subprocess test runs)
    run_in_process(train, [...], monkeypatch)                                (the same, inside pytest)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# name: ((image width, image height), (patch width, patch height)), as in the scripts
SMALL_PROFILES = {"low": ((256, 128), (192, 96)), "medium": ((320, 160), (224, 112))}


def run_in_process(module, argv: list[str], monkeypatch) -> int:
    """Run `module.main(argv)` as its command line would, with SMALL_PROFILES; returns the exit code."""
    from conftest import exit_code

    monkeypatch.setattr(module, "PROFILES", SMALL_PROFILES)
    return exit_code(module.main, argv)


def main() -> None:
    from training.errors import run_cli

    script, *argv = sys.argv[1:]
    module = importlib.import_module(Path(script).stem)
    module.PROFILES = SMALL_PROFILES
    run_cli(module.main, argv)


if __name__ == "__main__":
    main()
