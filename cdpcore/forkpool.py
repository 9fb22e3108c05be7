"""Pools of forked worker processes (the agent's sealing workers, the restore's fetching
workers) started so that a Ctrl-C cannot get lost.

Forking runs Python's at-fork callbacks in the parent (logging registers one), and an
exception raised inside one is printed as "Exception ignored" and dropped. A SIGINT that
arrived while the workers were forked raised its KeyboardInterrupt there: the Ctrl-C was
lost, and `cdp-agent run` committed the point it had been told to abandon. The stop
signals are therefore held back while the workers start (blocked, and in the main thread
their handlers only note them: a signal the kernel hands to another thread still has its
handler run in the main thread), and arrive (as KeyboardInterrupt, or the SIGTERM
handler) once the fork is done; the workers take back the caller's handlers and unblock
the signals before their own initializer runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .signals import STOP_SIGNALS, Handler, stop_handlers, stop_signals_deferred


def _start_worker(handlers: dict[int, Handler], initializer: Callable[..., object],
                  initargs: tuple[Any, ...]) -> None:
    for signum, handler in handlers.items():  # not the parent's noting ones
        signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    initializer(*initargs)


def fork_pool(workers: int, initializer: Callable[..., object],
              initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
    """A pool of `workers` forked processes, all running when it is returned; each runs
    `initializer(*initargs)` first (with fork, nothing is pickled: the workers inherit
    keys, codecs and clients)."""
    handlers = stop_handlers()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker,
                               initargs=(handlers, initializer, initargs))
    try:
        with stop_signals_deferred():
            pool.submit(os.getpid).result()  # with fork, the first submit starts every worker
    except BaseException:
        # A fork that failed part-way (EAGAIN at the process limit) leaves the workers
        # forked so far waiting for a manager thread that never started: shutdown cannot
        # reach them, and the program would hang at exit joining them.
        for worker in list(pool._processes.values()):
            worker.kill()
            worker.join()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool
