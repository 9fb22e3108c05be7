"""Relay between stdin/stdout and a TCP port on 127.0.0.1: the per-connection helper behind
the harness's guest forwards (QEMU `guestfwd=...-cmd:`: one process per guest connection).
Usage: python relay.py PORT. Standard library only: QEMU runs it as a plain script."""

from __future__ import annotations

import os
import socket
import sys
import threading


def _pump_in(sock: socket.socket) -> None:
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def main() -> None:
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    threading.Thread(target=_pump_in, args=(sock,), daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    main()
