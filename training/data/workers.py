"""Helper processes (data-loading workers, the cache's pool) and the stop signals of the stage.

The stage handles SIGTERM and SIGUSR1 itself (training.engine.stage.StopRequest: save the state after this step, exit
75). Slurm sends them to every process of a job, helpers included, and a forked helper starts with the stage's
Python handlers. A helper must not act on them: the main process decides when its helpers end and ends them by
asking (a sentinel on their queue) and waiting, never by a signal they could ignore. So every helper:

- is started with SIGTERM, SIGUSR1 and SIGINT blocked (`stop_signals_blocked` around the fork), so that not even
  the moment before its own set-up runs the stage's handlers;
- ignores them from its first instruction on (`ignore_stop_signals`, the pool initializer and the loader's
  worker_init_fn), then unblocks them;
- is ended by the main process: the pool here by `shutdown(wait=True, cancel_futures=True)` (the queued tasks are
  dropped, the running ones finish, a worker that dies makes the pool raise instead of waiting for it).

A signal that arrives meanwhile is only held back: it reaches the main process when the fork is done.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(interrupt: bool = False) -> None:
    """In a helper process: ignore SIGTERM and SIGUSR1 (and SIGINT with `interrupt`), then unblock them."""
    signals = STOP_SIGNALS + ((signal.SIGINT,) if interrupt else ())
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


@contextlib.contextmanager
def stop_signals_blocked():
    """Hold back SIGTERM, SIGUSR1 and SIGINT in this thread (and the processes and threads it starts) meanwhile."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + (signal.SIGINT,))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_helper(initializer: Callable | None, args: tuple) -> None:
    ignore_stop_signals(interrupt=True)  # Ctrl-C reaches the main process, which ends the pool
    if initializer is not None:
        initializer(*args)


def map_in_helpers(
    function: Callable[[Any], Any],
    items: Iterable,
    workers: int,
    on_result: Callable[[Any], None],
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> None:
    """Call `on_result(function(item))` for every item, computed in `workers` helper processes, in completion order.

    Returns when every item is done; an error in a worker (or in `on_result`) cancels the items not yet started,
    waits for the running ones and is raised here.
    """
    pool = ProcessPoolExecutor(workers, initializer=_start_helper, initargs=(initializer, initargs))
    try:
        with stop_signals_blocked():  # the workers start at the first submit (all of them with fork)
            futures = [pool.submit(function, item) for item in items]
        for future in as_completed(futures):
            on_result(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
