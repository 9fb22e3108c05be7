"""A fault-injecting TCP proxy on loopback, for putting between a client and the CDP
server (TLS passes through untouched: the faults hit the bytes on the wire).

Each accepted connection gets one fault, drawn from a seeded RNG:

- pass: forwarded faithfully;
- drop: closed at once, before a byte is forwarded;
- reset: the server's answer is cut by a TCP RST after a random number of bytes;
- stall: nothing is forwarded for `stall` seconds, then the connection is closed;
- slow: the server's answer trickles through in small pieces with pauses;
- truncate: the server's answer is cut (clean FIN) after a random number of bytes.

Bounded in count and time: at most `max_faults` faults in all, never more than
`max_streak` faulty connections in a row (so a client with that many retries always
gets through), every pause is bounded, and `close()` ends every thread. `forced` kinds
are injected first, one each, so a run with few connections still meets every kind.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

FAULTS = ("drop", "reset", "stall", "slow", "truncate")


@dataclass
class FaultProxy:
    target_port: int
    rng: random.Random
    rate: float = 0.3  # share of connections that get a fault
    kinds: tuple[str, ...] = FAULTS
    max_faults: int = 200
    max_streak: int = 2
    stall: float = 3.0
    forced: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._streak = 0
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def faults(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind != "pass")

    def _choose(self) -> str:
        with self._lock:
            allowed = self.faults < self.max_faults and self._streak < self.max_streak
            if allowed and self.forced:
                kind = self.forced.pop(0)
            elif allowed and self.rng.random() < self.rate:
                kind = self.rng.choice(self.kinds)
            else:
                kind = "pass"
            faulty = kind != "pass"
            self._streak = self._streak + 1 if faulty else 0
            self.counts[kind] += 1
            return kind

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            kind = self._choose()
            with self._lock:
                cut = self.rng.randrange(1, 6000)
            thread = threading.Thread(target=self._handle, args=(client, kind, cut),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, client: socket.socket, kind: str, cut: int) -> None:
        if kind == "drop":
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        if kind == "stall":
            self._closed.wait(self.stall)
            client.close()
            upstream.close()
            return
        up = threading.Thread(target=self._pipe, args=(client, upstream, "pass", 0),
                              daemon=True)
        up.start()
        self._pipe(upstream, client, kind, cut)
        up.join(30)

    def _pipe(self, src: socket.socket, dst: socket.socket, kind: str, cut: int) -> None:
        sent = 0
        src.settimeout(1.0)
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if kind in ("reset", "truncate") and sent + len(data) >= cut:
                    dst.sendall(data[:cut - sent])
                    if kind == "reset":
                        # SO_LINGER 0: close() sends an RST instead of a FIN.
                        dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
                    break
                if kind == "slow":
                    for i in range(0, len(data), 1024):
                        dst.sendall(data[i:i + 1024])
                        time.sleep(0.002)
                else:
                    dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)
