"""A Ctrl-C at any moment of a point ends it: the sealing workers' pool closes whatever
the workers were doing when the KeyboardInterrupt came."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, KeySet
from hotcopy import transfer
from hotcopy.sealpool import SealPool, Uploads


class _Unused:
    """A server no flush of empty workers reaches."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the server was asked: {name}")


def test_a_ctrl_c_while_flush_hands_out_its_tasks_closes_the_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`flush` gives each worker one task, and each waits at a barrier for the others (so
    that no worker takes two). A Ctrl-C between handing out the first and the second left
    the first waiting for a party that never came, and closing the pool waited for it:
    the agent hung after the Ctrl-C, with its snapshots held."""
    codec = BlobCodec(KeySet.from_master(os.urandom(fmt.MASTER_KEY_SIZE)))
    policy = transfer.RetryPolicy()
    uploads = Uploads(_Unused(), "h", policy, transfer.Throttle(0), ask_first=False)
    sender = transfer.Sender(_Unused(), "h", policy, transfer.Throttle(0),
                             transfer.UploadStats())
    pool = SealPool(codec, set(), 2, uploads)
    executor = pool._pool
    handed_out = 0
    submit = executor.submit

    def submit_until_interrupted(fn: Any, /, *args: Any) -> Any:
        nonlocal handed_out
        if handed_out == 1:
            time.sleep(0.5)  # the first task reaches its worker
            raise KeyboardInterrupt  # as a SIGINT arriving between the two tasks
        handed_out += 1
        return submit(fn, *args)

    monkeypatch.setattr(executor, "submit", submit_until_interrupted)
    outcome: list[BaseException] = []

    def interrupted_point() -> None:
        try:
            with pool:
                pool.flush(sender)
        except BaseException as exc:  # what the point ended with is the result
            outcome.append(exc)

    closing = threading.Thread(target=interrupted_point, daemon=True)
    closing.start()
    closing.join(30)
    if closing.is_alive():
        for worker in executor._processes.values():  # let this test's process end
            worker.kill()
        pytest.fail("closing the pool after the Ctrl-C waited for ever")
    assert len(outcome) == 1 and isinstance(outcome[0], KeyboardInterrupt), outcome
