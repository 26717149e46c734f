"""The stop signals of a stage: SIGTERM (a cancel, or Slurm's end of a job) and SIGUSR1 (Slurm's warning before a
time limit, `--signal`) ask it to save its state after the current step and stop (exit 75, training.errors)."""

from __future__ import annotations

import os
import signal
import sys

from training.errors import EXIT_PREEMPTED


class StopRequest:
    """SIGTERM/SIGUSR1 ask the stage to save and stop after this step; a second signal exits at once (the last saved
    state stays valid), with the preempted exit code once the state is saved (an srun step ends its other tasks with
    SIGTERM when the first one exits). Installed before the stage is built: a signal during set-up stops it at its
    first step."""

    def __init__(self):
        self.signum = 0
        self.saved = False  # the state of the stop is written: a later signal exits 75, not as a failure
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        if self.signum:
            print(f"second signal {signal.Signals(signum).name}: exiting at once", file=sys.stderr, flush=True)
            os._exit(EXIT_PREEMPTED if self.saved else 128 + signum)
        self.signum = signum
        print(f"{signal.Signals(signum).name} received: saving the state after this step", file=sys.stderr, flush=True)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
