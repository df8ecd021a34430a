"""Hostile network stand-ins on 127.0.0.1 for the probe tests and the reliability sweep.

`listener("half-open")` accepts connections and never answers (a captive portal or a stalled proxy),
`"plain-http"` answers every connection with a plain HTTP redirect (what a portal says to a TLS client),
`"closed"` is a port where nothing listens; `"unauthorized"` (401), `"server-error"` (503), `"rate-limited"` (429 with
`Retry-After: 3600`) answer every request so, and `"cut"` answers a file's HEAD, then cuts its GET short. Each
yields its port and is gone when the block ends.
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


def _answer(status: bytes, headers: bytes = b"", body: bytes = b'{"error": "kit sweep"}'):
    """serve(): answer any request with `status`, `headers` and `body`, then close."""

    def serve(connection: socket.socket) -> None:
        try:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n" + headers
                               + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    return serve


def _cut(connection: socket.socket) -> None:
    """A Hub whose file metadata (HEAD) looks right, and whose GET promises 1000 bytes and sends 20."""
    try:
        head = connection.recv(65536).startswith(b"HEAD")
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Repo-Commit: " + b"0" * 40 + b'\r\nETag: "kit-sweep"\r\n'
                           b"Content-Length: 1000\r\nConnection: close\r\n\r\n" + (b"" if head else b'{"_class"'))
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


ANSWERS = {"unauthorized": _answer(b"401 Unauthorized"), "server-error": _answer(b"503 Service Unavailable"),
           "rate-limited": _answer(b"429 Too Many Requests", b"Retry-After: 3600\r\n"),
           "cut": _cut}


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
    serve = serve or {"half-open": None, "plain-http": _redirect, **ANSWERS}[kind]
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
