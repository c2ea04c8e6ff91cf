"""A push target the tests control: a threaded stdlib HTTP server in the test process that
records every request (arrival time, path, headers, body), counts the requests open at once,
and answers as `behave(request)` says: a (status, headers, body) tuple, HANG (hold the
request until `release()` or 30 s, then answer 200), RESET (close with a TCP reset), or
BIG (200 with a 10 MiB body, counting what the peer took before it hung up).

Also the fixtures the push test modules share (import them into the module): `redis_proc`, a
Redis of the module's own (a push-enabled server of another module would claim its queues),
and `target`."""
from __future__ import annotations

import http.server
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from tests.conftest import RedisProcess

HANG, RESET, BIG = "hang", "reset", "big"
BIG_SIZE = 10 * 1024 * 1024


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Target:
    behave: Callable[[Received], Any] = lambda r: (200, {}, b"")
    requests: list[Received] = field(default_factory=list)
    open: int = 0
    max_open: int = 0
    big_sent: list[int] = field(default_factory=list)
    port: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> "Target":
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                target._serve(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, path: str = "/work", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def release(self) -> None:
        self.released.set()

    def paths(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def _serve(self, handler) -> None:
        size = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(size)
        got = Received(time.monotonic(), handler.path,
                       {k.lower(): v for k, v in handler.headers.items()}, body)
        with self.lock:
            self.requests.append(got)
            self.open += 1
            self.max_open = max(self.max_open, self.open)
        try:
            self._answer(handler, self.behave(got))
        finally:
            with self.lock:
                self.open -= 1

    def _answer(self, handler, action: Any) -> None:
        if action == HANG:
            self.released.wait(30)
            action = (200, {}, b"")
        if action == RESET:
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        if action == BIG:
            handler.send_response(200)
            handler.send_header("Content-Length", str(BIG_SIZE))
            handler.end_headers()
            sent, chunk = 0, b"x" * 65536
            try:
                while sent < BIG_SIZE:
                    handler.wfile.write(chunk)
                    sent += len(chunk)
                handler.wfile.flush()
            except OSError:
                pass
            self.big_sent.append(sent)
            handler.close_connection = True
            return
        status, headers, body = action
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # the dispatcher gave up on it (a timeout)
            handler.close_connection = True


@pytest.fixture(scope="module")
def redis_proc():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def target():
    t = Target().start()
    yield t
    t.stop()
