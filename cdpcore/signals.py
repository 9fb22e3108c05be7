"""Holding back the stop signals (SIGINT, SIGTERM) for a short step that must not be cut
in the middle: they arrive, as KeyboardInterrupt or the SIGTERM handler, when it ends."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread (and in the programs it starts
    meanwhile, which inherit the mask) until the block ends."""
    # The mask to restore is read first: a signal handler may run inside the call that
    # blocks the stop signals, once they are blocked (CPython checks for signals there),
    # and a KeyboardInterrupt raised there must find the mask restored too.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal arrives here
