"""Holding back the stop signals (SIGINT, SIGTERM) for a short step that must not be cut
in the middle: they arrive, as KeyboardInterrupt or the SIGTERM handler, when it ends."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
#: A handler as `signal.signal` takes it back.
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers


def stop_handlers() -> dict[int, Handler]:
    """The stop signals' handlers, where set from Python (None, a handler set otherwise,
    cannot be put back)."""
    return {signum: handler for signum in STOP_SIGNALS
            if (handler := signal.getsignal(signum)) is not None}


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread, and in the processes it forks or starts
    meanwhile, which inherit the mask, until the block ends. Another thread of the
    process may still take one, whose Python handler then runs in the main thread:
    `stop_signals_deferred` holds back the handlers too."""
    # The mask to restore is read first: a signal handler may run inside the call that
    # blocks the stop signals, once they are blocked (CPython checks for signals there),
    # and a KeyboardInterrupt raised there must find the mask restored too.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal arrives here


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block ends, whichever thread the kernel
    hands them to: in the main thread their handlers only note them meanwhile, and each
    noted one is raised again, to its own handler, at the end. Elsewhere (no handlers
    there), blocked as `stop_signals_blocked` does."""
    if threading.current_thread() is not threading.main_thread():
        with stop_signals_blocked():
            yield
        return
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    handlers = stop_handlers()  # a handler not set from Python: the mask holds its signal
    try:
        with stop_signals_blocked():
            for signum in handlers:
                signal.signal(signum, note)
            yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for again in dict.fromkeys(noted):  # once each, in the order they came
            signal.raise_signal(again)
