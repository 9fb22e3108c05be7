"""Stop signals held back for a step that must not be cut (cdpcore.signals)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from cdpcore.signals import stop_signals_deferred


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as in a terminal: under `nohup make test &` the tests inherit it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def another_thread() -> Iterator[None]:
    """A thread besides the main one, as the agent has: the kernel hands it a signal the
    main thread blocks, and Python runs the handler in the main thread all the same."""
    done = threading.Event()
    threading.Thread(target=done.wait, daemon=True).start()
    yield
    done.set()


def test_a_ctrl_c_taken_by_another_thread_waits_for_the_end_of_the_step(
        ctrl_c_raises: None, another_thread: None) -> None:
    """Blocking the signal in the main thread alone let the KeyboardInterrupt through in
    the middle of the step, at its next Python line."""
    steps = 0
    with pytest.raises(KeyboardInterrupt), stop_signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(20):
            time.sleep(0.005)
            steps += 1
    assert steps == 20


def test_each_signal_held_back_reaches_its_own_handler_once(another_thread: None) -> None:
    """And the handlers are the caller's again afterwards."""
    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        got.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with stop_signals_deferred():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), signum)
            time.sleep(0.05)
            assert got == []
        assert sorted(got) == [signal.SIGINT, signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is handler
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
