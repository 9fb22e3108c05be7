"""A Ctrl-C that arrives while a pool forks its workers is not lost (cdpcore.forkpool)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.ctrlc import interruptible

ROOT = Path(__file__).resolve().parents[2]

#: The parent gets SIGINT from inside its own at-fork callback, as a Ctrl-C that lands
#: while the pool forks: without the signals held back, the KeyboardInterrupt is raised in
#: the callback, where Python ignores it, and the program goes on.
PROGRAM = textwrap.dedent("""
    import logging, os, signal, sys, time
    from cdpcore.forkpool import fork_pool
    status = open("/proc/self/status").read().splitlines()
    print(*(line for line in status if line.startswith(("SigBlk", "SigIgn"))), flush=True)
    logging.basicConfig()
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
    pool = fork_pool(2, print, ("worker started",))
    print("went on after the Ctrl-C", flush=True)
    pool.shutdown()
""")


def test_a_ctrl_c_while_the_workers_fork_stops_the_program() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False, preexec_fn=interruptible)
    assert "went on" not in done.stdout, done.stdout  # with the program's signal state
    assert done.returncode == -signal.SIGINT, done.stderr
    assert "KeyboardInterrupt" in done.stderr
    assert "Exception ignored" not in done.stderr


def test_a_ctrl_c_another_thread_takes_while_the_workers_fork_stops_the_program() -> None:
    """The kernel hands the SIGINT to another thread of the agent (which does not block it),
    and Python runs its handler in the main thread, at its next line: inside the at-fork
    callback, where the KeyboardInterrupt was ignored, when the signals were only blocked."""
    program = textwrap.dedent("""
        import logging, os, signal, threading, time
        from cdpcore.forkpool import fork_pool
        logging.basicConfig()
        done = threading.Event()
        other = threading.Thread(target=done.wait, daemon=True)
        other.start()
        def ctrl_c_to_the_other_thread():
            signal.pthread_kill(other.ident, signal.SIGINT)
            time.sleep(0.1)  # the handler runs here, in the main thread
        os.register_at_fork(after_in_parent=ctrl_c_to_the_other_thread)
        pool = fork_pool(2, print, ("worker started",))
        print("went on after the Ctrl-C", flush=True)
        pool.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False, preexec_fn=interruptible)
    assert "went on" not in done.stdout, done.stdout
    assert done.returncode == -signal.SIGINT, done.stderr
    assert "KeyboardInterrupt" in done.stderr
    assert "Exception ignored" not in done.stderr


def test_the_workers_take_the_callers_handlers_back() -> None:
    """Not the handlers that note the signals in the parent while it forks."""
    program = textwrap.dedent("""
        import signal
        from cdpcore.forkpool import fork_pool
        def on_term(signum, frame):
            pass
        def names():
            return [getattr(signal.getsignal(s), "__name__", None)
                    for s in (signal.SIGINT, signal.SIGTERM)]
        signal.signal(signal.SIGTERM, on_term)
        pool = fork_pool(1, lambda: None, ())
        print(pool.submit(names).result(), names())
        pool.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True, preexec_fn=interruptible)
    assert done.stdout.split("] [") == ["['default_int_handler', 'on_term'",
                                        "'default_int_handler', 'on_term']\n"]


def test_the_workers_take_the_stop_signals_back() -> None:
    program = textwrap.dedent("""
        import signal
        from cdpcore.forkpool import fork_pool
        pool = fork_pool(1, lambda: None, ())
        print(sorted(int(s) for s in pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK,
                                                 []).result()))
        print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        pool.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["[]", "[]"]


def test_a_fork_that_fails_part_way_leaves_no_worker_behind() -> None:
    """The third of four forks fails (EAGAIN: the process limit, as with `workers = 100000`
    under a unit's TasksMax). The two workers already forked waited for a manager thread
    that was never started: shutdown could not reach them, and the program hung at exit
    joining them."""
    program = textwrap.dedent("""
        import ctypes, multiprocessing, multiprocessing.popen_fork as popen_fork, signal
        from cdpcore.forkpool import fork_pool
        launch, forks = popen_fork.Popen._launch, []
        def failing_launch(self, process_obj):
            forks.append(1)
            if len(forks) == 3:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return launch(self, process_obj)
        popen_fork.Popen._launch = failing_launch
        try:
            # The workers die with the program, also when the test's timeout kills it.
            fork_pool(4, ctypes.CDLL(None).prctl, (1, signal.SIGKILL))  # PR_SET_PDEATHSIG
        except BlockingIOError as exc:
            print("refused:", exc.strerror)
        print("workers left:", len(multiprocessing.active_children()), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.splitlines() == ["refused: Resource temporarily unavailable",
                                        "workers left: 0"], done.stderr
    assert done.returncode == 0, done.stderr


def test_a_ctrl_c_as_the_stop_signals_are_blocked_leaves_them_unblocked() -> None:
    """A Ctrl-C that lands just before the stop signals are blocked has its handler run
    inside `pthread_sigmask`, after the mask is set (CPython checks for signals there):
    the KeyboardInterrupt came from the call that blocked them, before the mask to restore
    was known, and the main thread kept SIGINT and SIGTERM blocked for good. Here the
    signal is raised from C, then the C `pthread_sigmask` blocks the stop signals: no
    Python code runs between the two calls, so the handler runs nowhere else."""
    program = textwrap.dedent("""
        import _signal, ctypes, itertools, operator, signal
        from cdpcore.forkpool import fork_pool
        raise_signal, sigmask = getattr(ctypes.CDLL(None), "raise"), signal.pthread_sigmask
        def ctrl_c_while_blocking(how, mask):
            if how == signal.SIG_BLOCK and signal.SIGINT in mask:
                # signal.pthread_sigmask is Python code, which would run the handler
                # first: _signal's is the C function it calls.
                calls = [(raise_signal, signal.SIGINT), (_signal.pthread_sigmask, how, mask)]
                return set(list(itertools.starmap(operator.call, calls))[1])
            return sigmask(how, mask)
        signal.pthread_sigmask = ctrl_c_while_blocking
        try:
            fork_pool(1, print, ("worker started",))
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        print(sorted(int(s) for s in sigmask(signal.SIG_BLOCK, [])))
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False, preexec_fn=interruptible)
    assert done.stdout.splitlines() == ["KeyboardInterrupt", "[]"], done.stderr
    assert done.returncode == 0, done.stderr
