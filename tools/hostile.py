"""Hostile network stand-ins on 127.0.0.1 for the probe tests and the reliability sweep.

`listener("half-open")` accepts connections and never answers (a captive portal or a stalled proxy),
`"plain-http"` answers every connection with a plain HTTP redirect (what a portal says to a TLS client),
`"closed"` is a port where nothing listens. Each yields its port and is gone when the block ends.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager


def _redirect(connection: socket.socket) -> None:
    try:
        connection.recv(1024)
        connection.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass


def free_port() -> int:
    """A port nothing listens on (bound once by us, then closed)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@contextmanager
def listener(kind: str = "half-open", serve=None):
    """A TCP server of `kind` (or with `serve(connection)` for each connection); yields its port."""
    if kind == "closed":
        yield free_port()
        return
    serve = serve or {"half-open": None, "plain-http": _redirect}[kind]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            held.append(connection)
            if serve:
                threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(1)
        for connection in held:
            connection.close()
        server.close()
