"""Request smuggling shapes and other framing a proxy in front could read differently from us:
each is answered with one error reply, the connection closes, and nothing written behind it
runs (docs/http-api.md#connection-level-rules). Also: `Upgrade:` on routes that do not upgrade,
and HTTP/1.0 with and without keep-alive on every kind of route."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

import psutil
import pytest

from tests.http_client import delete, post
from tests.util import numsub, peer_has_read, wait_until

FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
# What a front proxy that read the framing differently would forward as a second request.
SMUGGLED = b"POST /q/smuggled?value=evil HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"


def exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, read until the server closes (the socket timeout fails the test)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


def one_error(reply: bytes) -> tuple[int, str]:
    """The status and reason of the only reply in `reply`, with Connection: close."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n", reply
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length, f"bytes after the error reply: {reply!r}"
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


SHAPES = [
    ("cl-te", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Content-Length: 7\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Content-Length with Transfer-Encoding"),
    ("te-cl", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Transfer-Encoding: chunked\r\n"
     b"Content-Length: 7\r\n\r\n0\r\n\r\n", 400, "Content-Length with Transfer-Encoding"),
    ("duplicate-cl", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Content-Length: 7\r\n"
     b"Content-Length: 9\r\n\r\nvalue=x", 400, "malformed Content-Length"),
    ("duplicate-cl-same", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM
     + b"Content-Length: 7\r\nContent-Length: 7\r\n\r\nvalue=x", 400, "malformed Content-Length"),
    ("cl-list", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Content-Length: 7, 7\r\n\r\n"
     b"value=x", 400, "malformed Content-Length"),
    ("obs-fold", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"X-Folded: a\r\n b\r\n"
     b"Content-Length: 7\r\n\r\nvalue=x", 400, "malformed header field"),
    ("obs-fold-cl", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Content-Length:\r\n 7\r\n"
     b"\r\nvalue=x", 400, "malformed header field"),
    ("bare-lf-line", b"POST /q/first HTTP/1.1\nHost: t\r\n" + FORM + b"Content-Length: 7\r\n\r\n"
     b"value=x", 400, "malformed request line"),
    ("bare-lf-header", b"POST /q/first HTTP/1.1\r\nHost: t\n" + FORM + b"Content-Length: 7\r\n"
     b"\r\nvalue=x", 400, "malformed header field"),
    ("space-before-colon", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM
     + b"Content-Length : 7\r\n\r\nvalue=x", 400, "malformed header field"),
    ("te-gzip-chunked", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM
     + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported transfer coding"),
    ("te-twice", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "unsupported transfer coding"),
    ("http-2.0", b"POST /q/first HTTP/2.0\r\nHost: t\r\n" + FORM + b"Content-Length: 7\r\n\r\n"
     b"value=x", 505, "unsupported HTTP version"),
    ("http-0.9", b"GET /q/first\r\n\r\n", 400, "malformed request line"),
] + [
    (f"chunk-size-{name}", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM
     + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\nvalue=x\r\n0\r\n\r\n", 400,
     "malformed chunked body")
    for name, size in (("zz", b"zz"), ("0x7", b"0x7"), ("0_7", b"0_7"), ("-7", b"-7"),
                       ("plus", b"+7"), ("space-inside", b"0 7"))
] + [
    ("chunk-without-crlf", b"POST /q/first HTTP/1.1\r\nHost: t\r\n" + FORM
     + b"Transfer-Encoding: chunked\r\n\r\n7\r\nvalue=xYY0\r\n\r\n", 400, "malformed chunked body"),
]


@pytest.mark.parametrize("data, status, reason", [s[1:] for s in SHAPES],
                         ids=[s[0] for s in SHAPES])
def test_a_smuggling_shape_gets_one_error_and_nothing_behind_it_runs(H, redis, data, status,
                                                                     reason):
    reply = exchange(H, data + SMUGGLED)
    assert one_error(reply) == (status, reason)
    assert redis("KEYS", "*") == []  # neither the request nor what was behind it wrote


def test_requests_before_a_bad_one_are_answered_first(H, redis):
    good = b"POST /q/ok?value=v HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    bad = b"POST /q/first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0_7\r\n"
    reply = exchange(H, good + bad + SMUGGLED)
    first, _, rest = reply.partition(b"ok:1\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), reply
    assert one_error(rest) == (400, "malformed chunked body")
    assert redis("KEYS", "*smuggled*") == []


@pytest.mark.parametrize("method", [b"FOO", b"BREW", b"get", b"DESCRIBE"])
def test_an_unknown_method_is_routed_to_405_or_404_then_the_connection_closes(H, redis, method):
    """llhttp knows a fixed list of methods; any other still gets the route's answer."""
    reply = exchange(H, method + b" /q/x HTTP/1.1\r\nHost: t\r\n\r\n" + SMUGGLED)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, POST, DELETE" in head, reply
    assert json.loads(body) == {"error": "method not allowed"}
    reply = exchange(H, method + b" /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 "), reply
    assert redis("KEYS", "*") == []


# -- Upgrade on routes that do not upgrade -----------------------------------------------------

UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"


def server_rss(server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


@pytest.mark.parametrize("path", ["/q/up", "/stats/up", "/nowhere"])
def test_upgrade_on_a_plain_route_is_answered_then_the_connection_closes(H, redis, path):
    reply = exchange(H, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + UPGRADE
                     + b"\r\n" + SMUGGLED)
    assert reply.split(b" ", 2)[1] in (b"204", b"200", b"404"), reply
    assert b"HTTP/1.1" not in reply[8:], "a second reply"
    assert redis("KEYS", "*smuggled*") == []


@pytest.mark.parametrize("kind", ["q", "c"])
def test_64_mib_after_an_upgrade_request_are_not_buffered(H, redis, server, kind):
    """The review sent 64 MiB after `GET /c/<q>` with an Upgrade header: they were buffered
    for ever (RSS 50 -> 114 MiB)."""
    parts = urlsplit(H)
    before = server_rss(server)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET /{kind}/big HTTP/1.1\r\nHost: t\r\n".encode() + UPGRADE + b"\r\n")
        if kind == "c":
            wait_until(lambda: numsub(redis, "big") == 1, what="the stream to register")
        block = os.urandom(1 << 20)
        try:
            for _ in range(64):
                sock.sendall(block)
        except OSError:
            assert kind == "q"  # answered and closed: the rest may be refused
        if kind == "c":
            wait_until(lambda: peer_has_read(sock), what="the server to read (and drop) it")
            assert server_rss(server) - before < 16 * 1024 * 1024
            assert delete(H, "/q/big").status == 200  # the stream still works, and ends
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.endswith(b"6\r\nnull\r\n\r\n0\r\n\r\n"), data[-100:]
    assert server_rss(server) - before < 16 * 1024 * 1024


# -- HTTP/1.0 on every kind of route ------------------------------------------------------------

ROUTES = [  # (method, target, form body, status)
    ("GET", "/q/old", None, 204), ("POST", "/q/old", b"value=v", 200),
    ("DELETE", "/q/old", None, 200), ("GET", "/stats/", None, 200),
    ("GET", "/robots.txt", None, 200), ("GET", "/nowhere", None, 404),
    ("PUT", "/q/old", None, 405), ("POST", "/queue", b'body={"cmd": "get", "queue": "old"}', 200),
    ("GET", "/ws/old", None, 403),
]


def http10(method: str, target: str, body: bytes | None, keep_alive: bool) -> bytes:
    head = f"{method} {target} HTTP/1.0\r\nHost: t\r\n"
    if keep_alive:
        head += "Connection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


@pytest.mark.parametrize("method, target, body, status", ROUTES,
                         ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_http_1_0_without_keep_alive_is_answered_and_closed(H, redis, method, target, body,
                                                             status):
    reply = exchange(H, http10(method, target, body, False))
    assert reply.startswith(b"HTTP/1.0 %d " % status), reply
    assert b"keep-alive" not in reply.split(b"\r\n\r\n")[0].lower()


@pytest.mark.parametrize("method, target, body, status", ROUTES,
                         ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_http_1_0_with_keep_alive_keeps_the_connection(H, redis, method, target, body, status):
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(http10(method, target, body, True) + http10("GET", "/robots.txt", None,
                                                                 False))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    first, second = data.split(b"HTTP/1.0 ")[1:]
    assert first.startswith(b"%d " % status), data
    assert b"\r\nConnection: Keep-Alive\r\n" in first, first
    assert second.startswith(b"200 ") and b"User-agent" in second


@pytest.mark.parametrize("kind", ["c", "sse"])
@pytest.mark.parametrize("keep_alive", [False, True])
def test_an_http_1_0_stream_ends_by_close(H, redis, kind, keep_alive):
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(http10("GET", f"/{kind}/old10", None, keep_alive))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head = data.split(b"\r\n\r\n")[0].lower()
        assert b"keep-alive" not in head and b"transfer-encoding" not in head, head
        wait_until(lambda: numsub(redis, "old10") == 1, what="the stream to register")
        assert delete(H, "/q/old10").status == 200
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"null\r\n" if kind == "c" else b"data: null\n\n"), data


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is a listed test tool")
def test_curl_http_1_0_reads_every_reply_kind(H, redis):
    """An independent HTTP/1.0 client."""
    post(H, "/q/curl", form={"value": "v"})
    urls = [f"{H}/q/curl", f"{H}/q/curl", f"{H}/stats/", f"{H}/nowhere", f"{H}/robots.txt"]
    out = subprocess.run(["curl", "-s", "--http1.0", "-w", "%{http_code} "]
                         + [arg for url in urls for arg in ("-o", "/dev/null", url)],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["200", "204", "200", "404", "200"], out
