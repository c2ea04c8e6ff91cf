"""HTTP framing and slow-client defences at the connection level (where cyclone has none):
malformed lengths, transfer codings, header caps, request-line cap and timeouts."""
from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from restmq.http import Context, make_application
from tests.http_client import get


def exchange(server_port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", server_port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                out += data
        except socket.timeout:
            pass
        return out


def status_and_error(reply: bytes) -> tuple[int, str | None]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)["error"]
    except (ValueError, KeyError):
        return status, None


@pytest.fixture
def port(server, redis):
    return server.port


POST = b"POST /q/hard HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"


@pytest.mark.parametrize("headers, status", [
    (b"Content-Length: -5\r\n", 400),
    (b"Content-Length: abc\r\n", 400),
    (b"Content-Length: 7\r\nContent-Length: 8\r\n", 400),
    (b"Content-Length: 7, 8\r\n", 400),
    (b"Content-Length: \xd9\xa7\r\n", 400),  # a non-ASCII digit
    (b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Transfer-Encoding: gzip\r\n", 501),
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
])
def test_bad_framing_is_refused_and_stores_nothing(port, redis, headers, status):
    reply = exchange(port, POST + headers + b"\r\nvalue=x")
    assert status_and_error(reply)[0] == status
    assert b"Connection: close" in reply
    assert redis("EXISTS", "hard:queue") == 0


def test_repeated_content_length_is_refused_even_when_identical(port, redis):
    """llhttp refuses any second Content-Length (RFC 9112 §6.3 lets a server do so): one rule
    fewer on which a proxy in front and we could disagree."""
    reply = exchange(port, POST + b"Content-Length: 7\r\nContent-Length: 7\r\n"
                     b"Connection: close\r\n\r\nvalue=x")
    assert status_and_error(reply) == (400, "malformed Content-Length")
    assert redis("EXISTS", "hard:queue") == 0


def test_chunked_body_is_read_properly(port, redis):
    body = b"4\r\nvalu\r\n3;ext=1\r\ne=x\r\n0\r\nTrailer: t\r\n\r\n"
    reply = exchange(port, POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hard:1\r\n")
    assert redis("GET", "hard:1") == "x"


@pytest.mark.parametrize("body", [b"zz\r\nvalue=x\r\n0\r\n\r\n", b"-7\r\nvalue=x\r\n0\r\n\r\n",
                                  b"7\r\nvalue=xYY0\r\n\r\n"])
def test_malformed_chunks_are_refused(port, redis, body):
    reply = exchange(port, POST + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert status_and_error(reply) == (400, "malformed chunked body")
    assert redis("EXISTS", "hard:queue") == 0


def test_request_line_cap_gives_414(port):
    reply = exchange(port, b"GET /q/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_and_error(reply)[0] == 414


def test_header_caps_give_431(port):
    long_header = b"X-Long: " + b"a" * 20000 + b"\r\n"
    assert status_and_error(exchange(port, b"GET /stats/ HTTP/1.1\r\n" + long_header +
                                     b"\r\n"))[0] == 431
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    assert status_and_error(exchange(port, b"GET /stats/ HTTP/1.1\r\n" + many + b"\r\n"))[0] \
        == 431
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
    assert status_and_error(exchange(port, b"GET /stats/ HTTP/1.1\r\n" + big + b"\r\n"))[0] \
        == 431


def test_unknown_http_version(port):
    assert status_and_error(exchange(port, b"GET / HTTP/2.0\r\n\r\n"))[0] == 505
    assert status_and_error(exchange(port, b"GET / FOO/1.1\r\n\r\n"))[0] == 400


def test_expect_100_continue_with_an_oversize_body_gets_413_without_continue(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(POST + b"Content-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in reply


class _Collect(Protocol):
    """Gathers what the server sends; `closed` fires with it when the server closes."""

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_slowloris_head_is_cut_after_the_head_timeout():
    """Over a real socket, with the head timeout made short through the settings (its timing
    is pinned on a fake clock in tests/unit/test_http_timeouts.py)."""
    from twisted.internet import reactor
    app = make_application(Context(core=None), head_timeout=0.2)
    listener = reactor.listenTCP(0, app, interface="127.0.0.1")
    try:
        client = _Collect()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getHost().port)
        await connectProtocol(endpoint, client)
        client.transport.write(b"GET /stats/ HTTP/1.1\r\nX-Slow: ")
        reply = await client.closed.addTimeout(10, reactor)
    finally:
        await listener.stopListening()
    assert status_and_error(reply) == (408, "request timeout")
    assert b"\r\nConnection: close\r\n" in reply


def test_stalled_connections_do_not_slow_a_legitimate_client(server, redis):
    stalled = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /q/slow HTTP/1.1\r\nContent-Length: 100\r\n\r\nval")
            stalled.append(s)
        durations = []
        for _ in range(40):
            started = time.monotonic()
            assert get(server.url, "/stats/").status == 200
            durations.append(time.monotonic() - started)
        durations.sort()
        p95 = durations[int(len(durations) * 0.95) - 1]
        print(f"p95 with 200 stalled connections: {p95 * 1000:.1f} ms")
        assert p95 < 0.5
    finally:
        for s in stalled:
            s.close()
