"""User-facing errors: one line naming the thing at fault and what was expected, exit code 2."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

EXIT_USAGE = 2  # bad input: nothing was written
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGUSR1 after saving its state (sysexits EX_TEMPFAIL): run again to resume
EXIT_NONFINITE = 3  # a NaN or infinite loss stopped the stage; the last good state is kept (none before epoch 1 ends)


class UserError(Exception):
    """Bad input or environment that the user can fix. Printed as one line, exit code 2."""

    exit_code = EXIT_USAGE


class NonFiniteLossError(UserError):
    exit_code = EXIT_NONFINITE


class Preempted(Exception):
    """A stop signal ended the stage after its state was saved (the stage has said so): exit 75, and the same
    command resumes. Not an error: nothing more is printed."""

    exit_code = EXIT_PREEMPTED


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; a UserError becomes one line on stderr and its exit code (a traceback only with --debug),
    a stop by a signal (Preempted) its exit code 75."""
    args = sys.argv[1:] if argv is None else argv
    try:
        main(args)
    except Preempted as stop:
        sys.exit(stop.exit_code)
    except UserError as error:
        if "--debug" in args:
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(error.exit_code)


def one_line(error: Exception) -> str:
    """The message itself, also when a DataLoader worker re-raised it wrapped in its traceback."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("training.errors.", "UserError")) and ": " in last else last
    return text
