"""The blocking client: standard library only (http.client), one keep-alive connection per
thread, safe to share between threads."""
from __future__ import annotations

import http.client
import select
import socket
import threading
import time
import urllib.parse
from typing import Iterator

from restmq.client.errors import RestMQError, Unavailable
from restmq.client.models import Message
from restmq.client.wire import (Api, Request, backoff, basic_auth, check, for_protocol, lost,
                                protocol_of, qpath, reason_of, stream_line)

# Failures of a connection that was reused from an earlier call and that the server may have
# closed while it sat idle: such a request is sent once more on a fresh connection when it is
# safe to send again.
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _NotSent(Exception):
    """Nothing reached the server: sending again is always safe."""


class _Lost(Exception):
    """The request went out and no complete reply came back."""


class _Stale(Exception):
    """A kept-alive connection turned out closed: sent again at once on a new one."""


class Client(Api):
    """Client(url, auth=(user, password), auth_key=..., timeout=30, retries=3, protocol=None).

    `timeout` bounds every call (a long poll's `wait` is added to it); `retries` is how many
    times a call is sent again after a 503 or a lost reply when that is safe; `protocol` None
    asks the server's `/health` once, when a call first needs to know."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None,
                 auth_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 protocol: int | None = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._auth = basic_auth(auth, auth_key)
        self.timeout = timeout
        self.retries = retries
        self.protocol = protocol
        self._local = threading.local()
        self._lock = threading.RLock()  # close() may run in a signal handler
        self._closed = False
        self._open: set = set()

    # -- connections -------------------------------------------------------------------------

    def _new_connection(self, timeout: float | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
        except OSError as e:
            raise _NotSent(e) from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.auto_open = 0  # a connection close() shut must fail, not quietly open again
        with self._lock:
            if self._closed:  # closed while this one was being opened: it would escape
                conn.close()
                raise _NotSent(ConnectionAbortedError("the client was closed"))
            self._open.add(conn)
        return conn

    def _forget(self, conn) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def close(self) -> None:
        """Closes every connection of this client, from any thread: a call blocked on one of
        them (a long poll, a stream) ends at once with an error."""
        with self._lock:
            self._closed = True
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            try:
                conn.sock and conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _exchange(self, request: Request, timeout: float, reuse: bool):
        """One request and its whole reply: (status, body)."""
        conn = getattr(self._local, "conn", None) if reuse else None
        if conn is not None and (conn.sock is None or select.select([conn.sock], [], [], 0)[0]):
            # an idle connection with something to read was closed by the server, or holds
            # the 408 it sends before closing an idle one: never read that as our reply
            self._forget(conn)
            conn = None
        reused = conn is not None
        if conn is None:
            conn = self._new_connection(timeout)
        path, body, headers = request.encoded()
        try:
            if reused:
                conn.sock.settimeout(timeout)
            conn.request(request.method, self._base + path, body, {**self._auth, **headers})
            reply = conn.getresponse()
            data = reply.read()
        except STALE as e:
            self._forget(conn)
            raise (_Stale(e) if reused and request.resend else _Lost(e)) from None
        # close() from another thread or a signal handler leaves http.client with no socket
        # at any point of the exchange: AttributeError is how that shows
        except (OSError, http.client.HTTPException, AttributeError) as e:
            self._forget(conn)
            raise _Lost(e) from None
        if reply.will_close or not reuse:
            self._forget(conn)
        else:
            self._local.conn = conn
        return reply.status, data

    def clone(self) -> "Client":
        """A new client with the same settings and connections of its own."""
        twin = Client.__new__(Client)
        twin.__dict__.update(self.__dict__)
        twin._local, twin._lock, twin._open, twin._closed = (
            threading.local(), threading.RLock(), set(), False)
        return twin

    def _retry(self, attempt: int, deadline: float) -> bool:
        """Pauses before retry number attempt + 1 when one is allowed and the call's deadline
        leaves time for it after the pause."""
        pause = backoff(attempt + 1)
        if attempt >= self.retries or time.monotonic() + pause >= deadline:
            return False
        time.sleep(pause)
        return True

    def _send(self, request: Request, deadline: float):
        """Sends the request, again while that is safe and the deadline allows: the timeout
        bounds the whole call, its retries and their pauses included."""
        attempt = 0
        while True:
            if self._closed:
                raise Unavailable(None, f"{request.what}: the client was closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(None, f"{request.what}: no time left to reach {self.url}")
            try:
                # a kept-alive connection is reused once it shows nothing to read (a server
                # that closed it, or its 408, shows); a close that crosses the request is
                # then sent again only when that is safe, else raised as OutcomeUnknown
                status, body = self._exchange(request, left, reuse=True)
            except _Stale:
                continue  # the next try opens a new connection, so this happens once
            except _NotSent as e:
                if self._retry(attempt, deadline):
                    attempt += 1
                    continue
                raise Unavailable(None, f"cannot reach {self.url}: {e.args[0]}") from None
            except _Lost as e:
                if request.resend and self._retry(attempt, deadline):
                    attempt += 1
                    continue
                raise lost(request, self.url, e.args[0]) from None
            if status == 503 and request.resend and self._retry(attempt, deadline):
                attempt += 1
                continue
            return status, body

    def _deadline(self, request: Request) -> float:
        return time.monotonic() + self.timeout + request.wait

    def _call(self, request: Request):
        deadline = self._deadline(request)
        if request.needs_protocol:
            request = for_protocol(request, self.server_protocol(deadline))
        status, body = self._send(request, deadline)
        return request.parse(status, body)

    def server_protocol(self, deadline: float | None = None) -> int:
        """1 or 2, asked of `/health` once and remembered (within the deadline of the call
        that needs to know)."""
        if self.protocol is None:
            health = Request("GET", "/health", resend=True, what="health")
            status, body = self._send(health, deadline or self._deadline(health))
            self.protocol = protocol_of(status, body)
        return self.protocol

    # -- live delivery -----------------------------------------------------------------------

    def stream(self, queue: str, via: str = "sse", reconnect: bool = True) -> Iterator[Message]:
        """Yields each message delivered live (at most once), until the queue is purged.
        A broken connection is opened again (after a pause) unless `reconnect` is False."""
        if via not in ("sse", "comet"):
            raise ValueError("via is 'sse' or 'comet'")
        failures = 0
        while True:
            try:
                for ended, data in self._stream_once(queue, via):
                    failures = 0
                    if ended:
                        return
                    yield Message(queue, data["key"], data["value"])
            except (_NotSent, _Lost, Unavailable) as e:
                failures += 1
                if not reconnect or self._closed or failures > max(self.retries, 1) * 10:
                    raise Unavailable(None, f"stream of {queue}: {e}") from None
                time.sleep(backoff(min(failures, 6)))

    def _stream_once(self, queue: str, via: str):
        conn = self._new_connection(self.timeout)
        try:
            path = self._base + qpath("/sse/" if via == "sse" else "/c/", queue)
            conn.request("GET", path, headers=self._auth)
            reply = conn.getresponse()
            if reply.status != 200:
                body = reply.read()
                if reply.status == 503:
                    raise Unavailable(503, reason_of(body))
                check(reply.status, body)
                raise RestMQError(reply.status, "unexpected reply to a stream")
            # SSE sends a keepalive every 15 s, so silence past a minute is a dead peer;
            # comet sends nothing between messages and may stay silent for ever
            conn.sock.settimeout(max(60.0, self.timeout) if via == "sse" else None)
            yield from (_sse if via == "sse" else _comet)(reply)
        # http.client's chunked reader can fail with ValueError or AttributeError when the
        # connection ends in the middle of a chunk size: a broken stream like any other
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
            raise _Lost(e) from None
        finally:
            self._forget(conn)


def _lines(reply, separator: bytes):
    pending = b""
    while True:
        data = reply.read1(65536)
        if not data:
            raise _Lost(ConnectionError("the stream ended without a purge"))
        pending += data
        while separator in pending:
            line, pending = pending.split(separator, 1)
            yield line


def _comet(reply):
    for line in _lines(reply, b"\r\n"):
        yield stream_line(line)


def _sse(reply):
    for line in _lines(reply, b"\n"):
        if line.startswith(b"data:"):
            yield stream_line(line[5:].strip())
